"""The `lstmlm` command: a thin layer over the importable functions.

    lstmlm train     [--preset NAME] [--config FILE] [--FIELD VALUE ...] [--out RUN_DIR | --resume RUN_DIR]
                     [--processes N]   (data parallel: the same as torchrun --standalone --nproc-per-node N)
    lstmlm evaluate  RUN_DIR [--split valid|test | --file FILE] [--evaluation-batch-size N] [--json]
    lstmlm predict   RUN_DIR --text "..." [--top-k K] [--json]  |  RUN_DIR --split test --skip 40 --count 10
    lstmlm generate  RUN_DIR [--prompt "..."] [--num-words N] [--temperature T] [--top-k K] [--top-p P]
                     [--seed S] [--num-samples N] [--json]
    lstmlm score     RUN_DIR (--text "..." | --file FILE) [--json]
    lstmlm serve | export | plot | inspect | download  (see their --help)

evaluate, predict, generate, score and serve take --precision auto|float32|bfloat16|int8; without it the
precision saved in the run is used (the rule: lstmlm/precision.py).

Results go to stdout, progress and notes to stderr. `--json` prints the library's result dict as it is
(`LanguageModel.evaluate`, `predict_next`, `generate`): the same keys as the server's JSON. A bad argument or
file gives one line, `lstmlm: error: ...`, and exit status 2; Ctrl-C exits with 130, SIGTERM with 143, SIGHUP
with 129 (training saves a resumable checkpoint first).
"""

import argparse
import dataclasses
import importlib
import json
import os
import sys
import types
import typing

import lstmlm
from lstmlm.errors import LstmlmError

EXTRA_VERBS = {"serve": "lstmlm.serving.server", "export": "lstmlm.inference.export", "plot": "lstmlm.analysis.plots",
               "inspect": "lstmlm.analysis.inspection", "download": "lstmlm.data.download"}


def one_line(text):
    """`text` with its line breaks (any str.splitlines() splits on) escaped: an error is always one line, even
    when it quotes a file name or argument that holds a newline."""
    return "".join(c.encode("unicode_escape").decode("ascii") if c in LINE_BREAKS else c for c in str(text))


LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"


class Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def _field_type(field):
    if field.type in (bool, "bool"):
        return bool
    from lstmlm.config import Config

    kind = typing.get_type_hints(Config)[field.name]
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    return kind


def _positive_or_any(kind):
    def convert(text):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
    convert.__name__ = kind.__name__
    return convert


def add_train(subparsers):
    from lstmlm.config import DEPRECATED_NAMES, Config, flag
    from lstmlm.presets import PRESETS

    parser = subparsers.add_parser("train", help="train a model and write a run directory",
                                   description="Train a model. Start from a preset, override any field.")
    parser.add_argument("--preset", default="small", choices=[*PRESETS, "auto"],
                        help="named config (default: small); 'auto': speedrun sized to your corpus, budget and "
                             "machine (lstmlm/auto_preset.py)")
    parser.add_argument("--config", help="JSON file of config fields (applied after the preset)")
    parser.add_argument("--out", help="new run directory (default: runs/PRESET)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run (--epochs may extend it)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--no-report", action="store_true", help="skip the final test evaluation and sample")
    parser.add_argument("--processes", type=int, default=None, metavar="N", help=(
        "data-parallel training in N processes on this machine (torch DDP, started through torch.distributed.run "
        "like `torchrun --standalone --nproc-per-node N -m lstmlm train ...`); --batch-size stays the total number "
        "of streams and must be divisible by N; each process gets cores / N threads (or --threads)"))
    group = parser.add_argument_group("config fields (override the preset)")
    for field in dataclasses.fields(Config):
        kind = _field_type(field)
        help_text = field.metadata.get("help", "")
        if kind is bool:
            group.add_argument(f"--{flag(field.name)}", dest=field.name, default=None,
                               action=argparse.BooleanOptionalAction, help=help_text)
        else:
            group.add_argument(f"--{flag(field.name)}", dest=field.name, default=None,
                               type=_positive_or_any(kind), choices=field.metadata.get("choices"), help=help_text)
    for old, new in DEPRECATED_NAMES.items():  # published commands keep working, with a note
        field = next(f for f in dataclasses.fields(Config) if f.name == new)
        group.add_argument(f"--{flag(old)}", dest=new, default=None, type=_positive_or_any(_field_type(field)),
                           action=DeprecatedAlias, replacement=f"--{flag(new)}")
    parser.set_defaults(handler=run_train)


def resolve_config(args):
    from lstmlm.config import Config, load_config_values
    from lstmlm.presets import preset

    config = preset("speedrun" if args.preset == "auto" else args.preset)
    file_values = load_config_values(args.config) if args.config else {}
    config = config.replace(**file_values)  # the fields the file sets, over the preset
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
                 if getattr(args, f.name, None) is not None}
    config = config.replace(**overrides).validate()
    if args.preset == "auto":  # measures the corpus and this machine: the choice is recorded in config.json
        from lstmlm import auto_preset

        auto_preset.check_layout(getattr(args, "processes", None))
        config, args.auto_choice = auto_preset.resolve(config, {*file_values, *overrides},
                                                       log=lambda line: print(line, file=sys.stderr))
    return config


def run_train(args):
    from lstmlm.training import distributed
    from lstmlm.training.loop import train

    if args.processes is not None and not args.print_config and _launch(args):
        return distributed.launch(args.processes, args.argv, log=lambda line: print(line, file=sys.stderr))
    if args.resume:
        _check_resume_tokenizer(args)
        config = None
        if args.epochs is not None:
            from lstmlm.config import Config

            config = Config(epochs=args.epochs)
        out = train(config, resume=args.resume, command=["lstmlm", *args.argv])
    else:
        config = resolve_config(args)
        if args.print_config:
            print(json.dumps(config.to_dict(), indent=2))
            return 0
        choice = getattr(args, "auto_choice", None)
        out = train(config, out=args.out or f"runs/{args.preset}", command=["lstmlm", *args.argv],
                    annotations=None if choice is None else {"auto": choice.to_dict()})
    if not args.no_report and distributed.is_main():
        report(out)
    return 0


def _check_resume_tokenizer(args):
    """--resume continues a run with its own tokenizer: asking for another one is an error, not ignored."""
    from lstmlm import run_directory as rd
    from lstmlm.config import flag

    if args.tokenizer is None and args.vocabulary_size is None:
        return
    out = rd.check_run_directory(args.resume, need_model=False)
    _, saved = rd.read_config(out)
    for name in ("tokenizer", "vocabulary_size"):
        asked = getattr(args, name)
        if asked is not None and asked != getattr(saved, name):
            raise LstmlmError(f"--{flag(name)} {asked}: --resume {out} is a {saved.tokenizer} run"
                              + (f" of --vocabulary-size {saved.vocabulary_size}" if saved.tokenizer == "bpe" else "")
                              + "; a run keeps the tokenizer it started with (start a new run with --out)")


def _launch(args):
    """True when `--processes N` must start N processes here; False in a process they started (it trains)."""
    from lstmlm.training import distributed

    if args.processes <= 0:
        raise LstmlmError(f"--processes must be a positive integer, got {args.processes}")
    if distributed.launched():  # a rank started by torchrun (or by --processes): check and train
        if args.processes != int(os.environ["WORLD_SIZE"]):
            raise LstmlmError(f"--processes {args.processes}: this process was started as one of "
                              f"{os.environ['WORLD_SIZE']} by a launcher (torchrun); drop --processes")
        return False
    if args.processes == 1:
        return False
    # Check what can be checked here, so a mistake is one error line rather than one per process.
    if args.resume:
        from lstmlm import run_directory as rd
        from lstmlm.config import Config

        out = rd.check_run_directory(args.resume, need_model=False)
        batch_size = Config.from_dict(rd.read_json(out / rd.CONFIG)["config"]).batch_size
    else:
        batch_size = resolve_config(args).batch_size
    if batch_size % args.processes:
        raise LstmlmError(f"--batch-size {batch_size} is not divisible by --processes {args.processes}: it is the "
                          "total number of streams, and each process takes an equal share")
    return True


def report(run_dir):
    """After training: the best model's validation and test perplexity, and the tutorial's sample."""
    from lstmlm.inference.language_model import load

    model = load(run_dir)
    print(f"best model: {run_dir}/model.keras")
    splits = ["valid", "test"] if model.config.train is None or model.config.test else ["valid"]
    for split in splits:
        print(format_evaluation(model.evaluate(split=split)))
    _print_actual_vs_predicted(model, "test" if "test" in splits else "valid", 40, 10)


def format_evaluation(result):
    return (f"{result['split']}: loss {result['loss']:.4f} nats | perplexity {result['perplexity']:.2f} | "
            f"accuracy {result['accuracy']:.4f} | top-5 accuracy {result['top5_accuracy']:.4f} | "
            f"{result['tokens']:,} tokens"
            + (f" | {result['bits_per_character']:.4f} bits/char | word perplexity {result['word_perplexity']:.2f}"
               if "bits_per_character" in result else ""))


def _print_actual_vs_predicted(model, split, skip, count, as_json=False):
    from lstmlm.data.corpus import read_split

    ids, _ = read_split(model.config, split, model.tokenizer)
    result = model.actual_vs_predicted(ids, skip, count)
    if as_json:
        print(json.dumps({"split": split, "skip": skip, **result}))
    else:
        print(f"{split.capitalize()} data (windows of {model.config.num_steps} words from word {skip}):")
        print("Actual words: " + " ".join(result["actual"]))
        print("Predicted words: " + " ".join(result["predicted"]))


class DeprecatedAlias(argparse.Action):
    """An old flag that still works: stores into the new flag's dest and says so on stderr (hidden from --help)."""

    def __init__(self, option_strings, dest, replacement, **kwargs):
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.replacement = replacement

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"lstmlm: note: {option_string} is deprecated, use {self.replacement}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_precision(parser):
    """--precision for the verbs that run a trained model (the flag and its rule are in lstmlm/precision.py, where
    `lstmlm serve` takes it from too)."""
    from lstmlm.precision import add_precision_argument

    add_precision_argument(parser)


def add_epoch(parser):
    """--epoch for the verbs that load a trained model: an epoch's checkpoint instead of the best model."""
    parser.add_argument("--epoch", type=int, default=None,
                        help="load the checkpoint written after this epoch (checkpoints/model-NN.keras) instead of "
                             "the best-validation model.keras")


def add_evaluate(subparsers):
    parser = subparsers.add_parser("evaluate", help="perplexity and accuracy of a run on a split or file")
    parser.add_argument("run_dir")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--split", choices=["train", "valid", "test"], help="a split of the run's corpus (default test)")
    where.add_argument("--file", help="any UTF-8 text file")
    parser.add_argument("--evaluation-batch-size", type=int, default=1,
                        help="parallel streams (1 = exact, state carried)")
    parser.add_argument("--batch-size", dest="evaluation_batch_size", type=int, action=DeprecatedAlias,
                        replacement="--evaluation-batch-size")
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_precision(parser)
    add_epoch(parser)
    parser.set_defaults(handler=run_evaluate)


def run_evaluate(args):
    from lstmlm.inference.language_model import load

    if args.evaluation_batch_size <= 0:
        raise LstmlmError(f"--evaluation-batch-size must be positive, got {args.evaluation_batch_size}")
    model = load(args.run_dir, args.precision, epoch=args.epoch)
    result = model.evaluate(split=args.split or "test", file=args.file,
                            evaluation_batch_size=args.evaluation_batch_size)
    print(json.dumps(result) if args.json else format_evaluation(result))
    return 0


def _warn_unknown(unknown):
    if unknown:
        print(f"note: not in the vocabulary, read as <unk>: {' '.join(unknown)}", file=sys.stderr)


def add_predict(subparsers):
    parser = subparsers.add_parser("predict", help="most likely next words, or the tutorial's actual-vs-predicted")
    parser.add_argument("run_dir")
    parser.add_argument("--text", help="the words so far")
    parser.add_argument("--top-k", type=int, default=5, help="how many words to list")
    parser.add_argument("--whole-words", action="store_true", help=(
        "a char, byte or bpe model: list the most likely next whole words, each completed token by token up to "
        "the next token that begins with whitespace (a beam search: LanguageModel.next_whole_words)"))
    parser.add_argument("--split", choices=["train", "valid", "test"], help="tutorial report on this split")
    parser.add_argument("--skip", type=int, default=40, help="tutorial report: first window start")
    parser.add_argument("--count", type=int, default=10, help="tutorial report: number of words")
    parser.add_argument("--json", action="store_true")
    add_precision(parser)
    add_epoch(parser)
    parser.set_defaults(handler=run_predict)


def run_predict(args):
    from lstmlm.inference.language_model import load

    if (args.text is None) == (args.split is None):
        raise LstmlmError("predict: give exactly one of --text or --split")
    if args.skip < 0 or args.count <= 0:
        raise LstmlmError("predict: --skip must be >= 0 and --count positive")
    model = load(args.run_dir, args.precision, epoch=args.epoch)
    if args.split:
        _print_actual_vs_predicted(model, args.split, args.skip, args.count, args.json)
        return 0
    result = model.predict_next(args.text, args.top_k, whole_words=args.whole_words)
    _warn_unknown(result["unknown_words"])
    if args.json:
        print(json.dumps(result))
    else:
        for entry in result["predictions"]:  # repr() shows a token's spaces: ' the', 'a'
            word = entry["word"]
            if model.tokenizer.kind != "word" and not args.whole_words and word != "<eos>":
                word = repr(word)
            print(f"{entry['probability']:.4f}  {word}")
    return 0


def add_generate(subparsers):
    from lstmlm.inference.language_model import DEFAULT_NUM_WORDS

    parser = subparsers.add_parser("generate", help="continue a prompt word by word")
    parser.add_argument("run_dir")
    parser.add_argument("--prompt", default="", help="words to start from (default: a new sentence)")
    parser.add_argument("--num-words", type=int, default=DEFAULT_NUM_WORDS,
                        help=f"how many words to generate (default {DEFAULT_NUM_WORDS})")
    parser.add_argument("--words", dest="num_words", type=int, action=DeprecatedAlias, replacement="--num-words")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k most likely (0 = all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (1 = off)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (same seed, same text)")
    parser.add_argument("--num-samples", type=int, default=None,
                        help="N continuations in one batch; sample i is what --seed SEED+i gives alone")
    parser.add_argument("--json", action="store_true")
    add_precision(parser)
    parser.set_defaults(handler=run_generate)


def run_generate(args):
    from lstmlm.inference.language_model import load

    if args.seed is not None and args.seed < 0:  # numpy's default_rng refuses it with a ValueError
        raise LstmlmError(f"--seed must be >= 0, got {args.seed}")
    model = load(args.run_dir, args.precision)
    result = model.generate(args.prompt, args.num_words, args.temperature, args.top_k, args.top_p, args.seed,
                            args.num_samples)
    _warn_unknown(result["unknown_words"])
    prompt = " ".join(result["prompt_words"]) + " " if result["prompt_words"] else ""
    if model.tokenizer.kind != "word":  # the text goes on right after the prompt as written
        prompt = args.prompt
    if args.json:
        print(json.dumps(result))
    elif args.num_samples is None:
        print(prompt + result["text"])
    else:
        for i, sample in enumerate(result["samples"]):
            print(f"--- sample {i + 1} (seed {sample['seed']}) ---")
            print(prompt + sample["text"])
    return 0


def add_score(subparsers):
    parser = subparsers.add_parser("score", help="log-probability of every word of a text, and its perplexity")
    parser.add_argument("run_dir")
    text = parser.add_mutually_exclusive_group(required=True)
    text.add_argument("--text", help="the text to score")
    text.add_argument("--file", help="a UTF-8 text file to score (read as one text)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_precision(parser)
    parser.set_defaults(handler=run_score)


def run_score(args):
    from lstmlm.inference.language_model import load

    if args.file is not None:
        try:
            text = open(args.file, encoding="utf-8").read()
        except (OSError, UnicodeDecodeError) as error:
            raise LstmlmError(f"--file {args.file}: cannot read it ({getattr(error, 'strerror', None) or error})") \
                from None
    else:
        text = args.text
    result = load(args.run_dir, args.precision).score(text)
    _warn_unknown(result["unknown_words"])
    if args.json:
        print(json.dumps(result))
        return 0
    for entry in result["word_scores"]:
        print(f"{entry['log_probability']:9.4f}  {entry['word']}")
    print(f"total log-probability {result['total_log_probability']:.4f} nats | {result['tokens']} tokens | "
          f"perplexity {result['perplexity']:.2f}"
          + (f" | {result['words']} words | word perplexity {result['word_perplexity']:.2f}"
             if "words" in result else ""))
    return 0


def build_parser():
    parser = Parser(prog="lstmlm", description="Word-level LSTM language models (Keras 3).")
    parser.add_argument("--version", action="version", version=lstmlm.__version__)
    subparsers = parser.add_subparsers(dest="verb", required=True, parser_class=Parser)
    for add in (add_train, add_evaluate, add_predict, add_generate, add_score):
        add(subparsers)
    for verb, module in EXTRA_VERBS.items():
        try:
            importlib.import_module(module).add_parser(subparsers)
        except ModuleNotFoundError as error:
            if error.name != module:
                raise
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command line recorded in config.json
    try:
        return args.handler(args)
    except LstmlmError as error:
        print(f"lstmlm: error: {one_line(error.for_command_line())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # Ctrl-C (130), or SIGTERM (143) / SIGHUP (129) during training
        status = getattr(interrupt, "exit_status", 130)
        print(f"lstmlm: {'interrupted' if status == 130 else 'stopped by ' + interrupt.args[0]}", file=sys.stderr)
        return getattr(interrupt, "exit_status", 130)


if __name__ == "__main__":
    sys.exit(main())
