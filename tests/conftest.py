"""Put tests/ on sys.path so helper modules (e.g. bad_images) import by name."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
