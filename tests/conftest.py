import os
import sys
from pathlib import Path

# Nothing in the test suite may reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def pytest_configure(config):
    # CI counts the tests carrying this marker, so a security test that stops being collected is noticed.
    config.addinivalue_line("markers", "security: a test of a row of the security threat table")
