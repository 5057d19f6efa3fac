"""Writes N small greyscale gradients as plain PGM files under images/ (default 5, some in a
subdirectory), so the example has pictures without any image library."""
import os
import sys

root = os.path.dirname(os.path.abspath(__file__)) if len(sys.argv) < 2 else sys.argv[1]
count = int(sys.argv[2]) if len(sys.argv) > 2 else 5
for i in range(count):
    sub = "images/more" if i % 3 == 2 else "images"
    os.makedirs(os.path.join(root, sub), exist_ok=True)
    w = h = 16
    rows = [" ".join(str((x * 16 + y * 8 + i * 20) % 256) for x in range(w)) for y in range(h)]
    with open(os.path.join(root, sub, f"pic{i}.pgm"), "w") as f:
        f.write(f"P2\n{w} {h}\n255\n" + "\n".join(rows) + "\n")
