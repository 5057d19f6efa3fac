"""shrink.py IN OUT: halves a plain (P2) PGM picture by averaging 2x2 blocks."""
import sys

src, dst = sys.argv[1], sys.argv[2]
words = open(src).read().split()
if words[0] != "P2":
    sys.exit(f"{src}: not a plain PGM (P2) file")
w, h, top = int(words[1]), int(words[2]), int(words[3])
px = [int(v) for v in words[4:4 + w * h]]
out = []
for y in range(0, h - 1, 2):
    out.append(" ".join(str((px[y * w + x] + px[y * w + x + 1] + px[(y + 1) * w + x] + px[(y + 1) * w + x + 1]) // 4)
                        for x in range(0, w - 1, 2)))
with open(dst, "w") as f:
    f.write(f"P2\n{w // 2} {h // 2}\n{top}\n" + "\n".join(out) + "\n")
