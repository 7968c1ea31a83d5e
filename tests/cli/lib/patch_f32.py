# patch_f32.py FILE TENSOR INDEX VALUE: overwrites one element of an F32 tensor of a
# safetensors file in place (cli_nonfinite.sh, inspect.sh: NaN and Inf weights).
import json, struct, sys
path, name, idx, val = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
with open(path, 'r+b') as f:
    n = struct.unpack('<Q', f.read(8))[0]
    t = json.loads(f.read(n))[name]
    assert t['dtype'] == 'F32', t
    f.seek(8 + n + t['data_offsets'][0] + 4 * idx)
    f.write(struct.pack('<f', val))
