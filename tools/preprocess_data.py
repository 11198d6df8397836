"""Tokenize JSON Lines / text files into Megatron .bin/.idx datasets (Megatron-LM's flag names).

    python tools/preprocess_data.py --input corpus.jsonl --output-prefix data/corpus \
        --tokenizer-type HuggingFaceTokenizer --tokenizer-model path/to/tokenizer.json \
        --append-eod --workers 8

prints one prefix per json key (here ``data/corpus_text_document``) to pass to --data-path.
"""
import argparse
import sys
import warnings
from typing import List, Optional

from megatron_masklm.cli_errors import refuse_overlap, run_cli

TOKENIZER_TYPES = ("SentencePieceTokenizer", "HuggingFaceTokenizer", "NullTokenizer")


def build_parser() -> argparse.ArgumentParser:
    """The CLI flags, named as in Megatron-LM's tools/preprocess_data.py."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", nargs="+", required=True,
                        help=".jsonl/.json (one JSON object per line) or plain-text files")
    parser.add_argument("--output-prefix", required=True,
                        help="outputs are {prefix}_{key}_document.bin/.idx")
    parser.add_argument("--json-keys", nargs="+", default=["text"],
                        help="JSON keys to tokenize, one dataset each (default: text)")
    parser.add_argument("--tokenizer-type", required=True, choices=TOKENIZER_TYPES)
    parser.add_argument("--tokenizer-model",
                        help="SentencePiece .model, or tokenizer.json / its directory")
    parser.add_argument("--vocab-size", type=int, help="NullTokenizer only: ids 0..N-1, eod N-1")
    parser.add_argument("--append-eod", action="store_true",
                        help="append the end-of-document token to every document")
    parser.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    parser.add_argument("--text-mode", choices=("file", "paragraphs"), default="file",
                        help="plain text: one document per file, or per blank-line-separated "
                             "paragraph (default: file)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or summary")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the CLI; exit status 1 with a one-line error for bad input, 130 on Ctrl-C."""
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex|absl).*")
    return run_cli(lambda: _preprocess(args), output=args.output_prefix)


def _preprocess(args) -> int:
    from megatron_masklm.data import build_indexed_dataset, build_tokenizer

    for key in args.json_keys:  # the files --output-prefix names, against every --input
        for ext in (".bin", ".idx"):
            output = f"{args.output_prefix}_{key}_document{ext}"
            for path in args.input:
                refuse_overlap(inputs={"--input": path}, outputs={"--output-prefix": output})
    tokenizer = build_tokenizer(args.tokenizer_type, tokenizer_model=args.tokenizer_model,
                                vocab_size=args.vocab_size)
    prefixes = build_indexed_dataset(
        args.input, args.output_prefix, tokenizer, json_keys=args.json_keys,
        append_eod=args.append_eod, text_mode=args.text_mode, workers=args.workers,
        progress=not args.no_progress)
    for prefix in prefixes.values():
        print(prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
