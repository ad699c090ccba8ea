"""Training the embedded default (placeholder while the trainers are written)."""


def add_cli(sub) -> None:
    p = sub.add_parser("train", help="train the embedded default models (clip, vae, t2i, ip2p)")
    p.set_defaults(func=lambda args: 0)
