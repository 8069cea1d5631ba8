import os
import sys

# Every model, tokenizer and dataset in the tests is built locally; nothing is downloaded.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(__file__))
