"""Write ``service-tickets/``: the recorded tickets the service line's integration test replays (run from the
repository root: ``.venv/bin/python tests/data/recordings/make_service_tickets.py``).

Eight held-out tickets (``fusionline synth service --split held-out --seed 43 --size 160``: photos, spoken
complaints, typed contact details, follow-ups), then one ticket per kind of bad voice message (the bad-input
corpus's WAV files, with a good photo: each must be quarantined with its reason), a silent one, and a follow-up of
a ticket the line never saw. Rewriting it changes the golden answers (``pytest --update-golden``).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from connectors.recording import Manifest  # noqa: E402
from connectors.records import encode_png, encode_wav  # noqa: E402
from pipelines.lines.service.synth import draw_ticket, render_photo, synth_service  # noqa: E402

OUT = Path(__file__).resolve().parent / "service-tickets"
TICKETS, SEED, SIZE = 8, 43, 160
#: Bad voice messages: item id -> the corpus file (``tests/data/bad/audio``), or None for a silent clip.
BAD_AUDIO = {"bad-empty": "empty.wav", "bad-not-audio": "text.wav", "bad-truncated": "truncated.wav",
             "bad-nan": "float-nan.wav", "bad-rate": "5hz.wav", "bad-silent": None}


def main() -> None:
    import numpy as np

    shutil.rmtree(OUT, ignore_errors=True)
    synth_service(OUT, TICKETS, SEED, split="held-out", size=SIZE, progress=False)
    manifest = Manifest.read(OUT)
    t = json.loads((OUT / "events.jsonl").read_text().splitlines()[-1])["t"] + 1.0
    photo = encode_png(render_photo(draw_ticket(SEED, TICKETS, "held-out"), SIZE))
    lines = []
    for item_id, corpus in BAD_AUDIO.items():
        data = (ROOT / "tests/data/bad/audio" / corpus).read_bytes() if corpus else \
            encode_wav(np.zeros((1, 16000), np.float32), 16000)
        (OUT / "audio" / f"{item_id}.wav").write_bytes(data)
        (OUT / "frames" / f"{item_id}.png").write_bytes(photo)
        lines.append({"seq": manifest.count + len(lines), "t": t, "item_id": item_id,
                      "image": f"frames/{item_id}.png", "audio": f"audio/{item_id}.wav"})
        t += 1.0
    lines.append({"seq": manifest.count + len(lines), "t": t, "item_id": "T99999.f1",
                  "note": "is my repair finished yet"})
    with (OUT / "events.jsonl").open("a") as events:
        events.writelines(json.dumps(line) + "\n" for line in lines)
    manifest.count += len(lines)
    manifest.generator["appended"] = "bad voice messages and an orphan follow-up (make_service_tickets.py)"
    manifest.write(OUT)
    print(f"wrote {manifest.count} messages to {OUT}")


if __name__ == "__main__":
    main()
