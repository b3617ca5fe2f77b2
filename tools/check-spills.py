#!/usr/bin/env python3
"""Fail when an innermost loop of whisker's kernels moves vectors to or from the stack.

A micro-kernel's accumulators must stay in registers through its multiply-add loop. LLVM
keeps them there only while the accumulator array is indexed by constants; one run-time
index anywhere in the function (an epilogue looping over the live rows) and it stores every
accumulator to the stack after every multiply-add. That cost the AVX2 GEMM half its speed
on AMD Zen 3 (ResNet-50 6.2 → 10–12 images/s when fixed) and no numerical test can see it.

    tools/check-spills.py BINARY      # disassembles with objdump; exit 1 on a spilling loop
    tools/check-spills.py --selftest  # the detector on two known snippets

A loop here is a backward jump; innermost: no other backward jump inside it. Reported: the
innermost loops of functions in `whisker_kernels` that hold fused multiply-adds and vector
(xmm/ymm/zmm) loads or stores addressed off %rsp.
"""
import re
import subprocess
import sys

JUMP = re.compile(r"j\w+\s+([0-9a-f]+)\b")
STACK_VEC = re.compile(r"%[xyz]mm\d+,-?(0x[0-9a-f]+)?\(%rsp\)|\(%rsp\),%[xyz]mm\d+")


def functions(text):
    """(name, [(address, instruction)]) for each function of an `objdump -d -C` listing."""
    name, body = None, []
    for line in text.splitlines():
        head = re.match(r"[0-9a-f]+ <(.*)>:$", line)
        if head:
            if name:
                yield name, body
            name, body = head.group(1), []
            continue
        ins = re.match(r"\s*([0-9a-f]+):\s*(.*)", line)
        if name and ins:
            body.append((int(ins.group(1), 16), ins.group(2)))
    if name:
        yield name, body


def spilling_loops(text, scope="whisker_kernels"):
    found = []
    for name, body in functions(text):
        if scope not in name or not body:
            continue
        for addr, ins in body:
            jump = JUMP.match(ins)
            if not jump:
                continue
            top = int(jump.group(1), 16)
            if not body[0][0] <= top < addr:
                continue
            loop = [(a, i) for a, i in body if top <= a <= addr]
            nested = any(
                (j := JUMP.match(i)) and top <= int(j.group(1), 16) < a for a, i in loop[:-1]
            )
            if nested:
                continue
            fmas = sum("vfmadd" in i or "vfnmadd" in i for _, i in loop)
            stack = sum(bool(STACK_VEC.search(i)) for _, i in loop)
            if fmas and stack:
                found.append(f"{name} [{top:x}, {addr:x}]: {len(loop)} instructions, "
                             f"{fmas} multiply-adds, {stack} vector moves to or from the stack")
    return sorted(set(found))


SPILLING = """\
0000000000075c40 <whisker_kernels::conv::x86::tile_avx2>:
   75d80:	vmovups (%r9),%ymm14
   75d85:	vmovups 0x20(%r9),%ymm13
   75d8b:	vbroadcastss (%r11,%rax,4),%ymm15
   75d91:	vfmadd231ps %ymm14,%ymm15,%ymm12
   75d96:	vmovaps %ymm12,0x20(%rsp)
   75d9c:	vfmadd231ps %ymm15,%ymm13,%ymm11
   75da1:	vmovaps %ymm11,0x40(%rsp)
   75e4f:	inc    %rax
   75e58:	jne    75d80 <whisker_kernels::conv::x86::tile_avx2+0x140>
   75e60:	vmovaps %ymm11,0x40(%rsp)
   75e68:	jmp    75d80 <whisker_kernels::conv::x86::tile_avx2+0x140>
"""
CLEAN = """\
0000000000091500 <whisker_kernels::weight_grad::simd::gemm_avx2>:
   91751:	vmovaps %ymm3,0x20(%rsp)
   91760:	vmovups (%rbx),%ymm2
   91769:	vbroadcastss (%r8),%ymm6
   9176e:	vfmadd231ps %ymm2,%ymm6,%ymm3
   917d0:	dec    %r14
   917d3:	jne    91760 <whisker_kernels::weight_grad::simd::gemm_avx2+0x260>
   917d8:	vmovaps %ymm3,0x20(%rsp)
   917de:	jmp    91751 <whisker_kernels::weight_grad::simd::gemm_avx2+0x251>
"""


def main():
    if sys.argv[1:] == ["--selftest"]:
        bad, good = spilling_loops(SPILLING), spilling_loops(CLEAN)
        assert len(bad) == 1 and "2 multiply-adds, 2 vector moves" in bad[0], bad
        assert good == [], good
        print("check-spills: selftest ok")
        return 0
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    listing = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", sys.argv[1]],
                             capture_output=True, text=True, check=True).stdout
    bad = spilling_loops(listing)
    for line in bad:
        print(f"check-spills: {line}", file=sys.stderr)
    if bad:
        print(f"check-spills: {len(bad)} kernel loop(s) of {sys.argv[1]} keep vectors on the stack "
              "(an accumulator array indexed at run time?)", file=sys.stderr)
        return 1
    print(f"check-spills: no kernel loop of {sys.argv[1]} moves vectors through the stack")
    return 0


if __name__ == "__main__":
    sys.exit(main())
