"""The demo model: a small separator trained on procedurally generated music, shipped in the package.

- `generate`: the seeded multitrack generator (drums, bass, other, vocals at 44.1 kHz stereo) that
  the demo model is trained and validated on;
- `train`: the training script (`python -m sfsep.demo.train`), which also prints the validation
  tables at 44.1 kHz and below;
- `demo.safetensors` and `validation.json` (package data): the trained weights, which the
  registry entry `demo` loads with no download, and the scores recorded for them.
"""
