"""pairedit: image editing by example (Visual Instruction Inversion on InstructPix2Pix)."""

__version__ = "0.1.0"
