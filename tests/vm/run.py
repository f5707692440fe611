#!/usr/bin/env python3
"""The kernel lab's runner: boots the host's newest installed kernel under
QEMU (virtme-run from virtme-ng, the host's filesystem shared read-only,
software emulation), runs scenarios inside with a freshly built ferrothin,
and hands back their output, their exit status and, on failure, the guest's
kernel log.

    tests/vm/run.py                      # every scenario in tests/vm/scenarios, one boot
    tests/vm/run.py smoke cross-kernel-to-ft
    tests/vm/run.py --list

Every scenario runs in the same boot, one after another, each in its own
shell with its own timeout; the whole guest has a timeout too. Results,
the console and the kernel log stay in --out (default: a new directory
under the system's temp dir), whose path is printed.

Exit status: 0 when the guest ran every scenario and each passed; 1 when
a scenario failed; 2 when the guest did not finish (timeout, boot failure);
64 for a usage error.
"""

import argparse
import glob
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SCENARIOS = os.path.join(HERE, "scenarios")


def version_key(path):
    """`/boot/vmlinuz-6.1.0-57-amd64` sorts by (6, 1, 0, 57)."""
    ver = os.path.basename(path).split("-", 1)[-1]
    return [int(n) for n in re.findall(r"\d+", ver)]


def newest_kernel():
    kernels = [k for k in glob.glob("/boot/vmlinuz-*") if os.path.isfile(k)]
    if not kernels:
        return None
    return max(kernels, key=version_key)


def all_scenarios():
    return sorted(
        os.path.basename(p)[:-3] for p in glob.glob(os.path.join(SCENARIOS, "*.sh"))
    )


def parse_args(argv):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("scenarios", nargs="*", help="names in tests/vm/scenarios (default: all), or script paths")
    ap.add_argument("--bin", default=os.environ.get("FERROTHIN_BIN",
                                                    os.path.join(REPO, "target/debug/ferrothin")),
                    help="the ferrothin binary (default: target/debug/ferrothin, or $FERROTHIN_BIN)")
    ap.add_argument("--kernel", help="kernel image (default: the newest /boot/vmlinuz-*)")
    ap.add_argument("--timeout", type=int, default=1200, help="seconds for the whole guest (default 1200)")
    ap.add_argument("--scenario-timeout", type=int, default=420,
                    help="seconds for each scenario (default 420)")
    ap.add_argument("--memory", type=int, default=2048, help="guest MiB (default 2048)")
    ap.add_argument("--cpus", type=int, default=2, help="guest CPUs (default 2)")
    ap.add_argument("--tmpfs-mb", type=int, default=1280,
                    help="the guest's scratch tmpfs in MiB (default 1280)")
    ap.add_argument("--out", help="results directory (default: a new one under the temp dir)")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    return ap.parse_args(argv)


# Disk images made for this boot, removed after it.
IMAGES = []


def machine_options(scripts, out):
    """What scenarios ask of the machine, in comment lines of their own:
    `# lab-image: NAME MIB` (a sparse disk image in OUT), `# lab-kopt: OPT`
    (guest kernel command line), `# lab-qemu: ARGS` (QEMU arguments, @OUT@
    standing for OUT). Any of them moves the boot to a q35 machine (virtme's
    default microvm has no PCI bus); they apply to the whole boot."""
    kopts, qemu = [], []
    IMAGES.clear()
    for n in scripts:
        path = n if n.endswith(".sh") else os.path.join(SCENARIOS, n + ".sh")
        with open(path) as f:
            for line in f:
                if line.startswith("# lab-image:"):
                    name, mib = line.split(":", 1)[1].split()
                    img = os.path.join(out, name)
                    with open(img, "wb") as i:
                        i.truncate(int(mib) << 20)
                    IMAGES.append(img)
                elif line.startswith("# lab-kopt:"):
                    kopts += line.split(":", 1)[1].split()
                elif line.startswith("# lab-qemu:"):
                    qemu += [a.replace("@OUT@", out) for a in line.split(":", 1)[1].split()]
    if not kopts and not qemu:
        return []
    opts = ["--disable-microvm"]
    for k in kopts:
        opts += ["--kopt", k]
    # --qemu-opts takes every argument after it: it goes last.
    return opts + ["--qemu-opts"] + qemu if qemu else opts


def boot(cmd, console, kernel_console, timeout):
    """Runs one guest; returns (timed out, its exit status)."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    threads = [threading.Thread(target=tee, args=(proc.stdout, console, True)),
               threading.Thread(target=tee, args=(proc.stderr, kernel_console, False))]
    for t in threads:
        t.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    for t in threads:
        t.join()
    return timed_out, proc.returncode


def tee(stream, sink, echo):
    for line in iter(stream.readline, b""):
        sink.write(line)
        sink.flush()
        if echo:
            sys.stdout.buffer.write(line)
            sys.stdout.flush()


def main(argv):
    args = parse_args(argv)
    if args.list:
        print("\n".join(all_scenarios()))
        return 0
    names = args.scenarios or all_scenarios()
    scripts = []
    for n in names:
        path = n if n.endswith(".sh") else os.path.join(SCENARIOS, n + ".sh")
        if not os.path.isfile(path):
            print("run.py: no scenario %r (see --list)" % n, file=sys.stderr)
            return 64
        scripts.append(os.path.abspath(path) if n.endswith(".sh") else n)

    kernel = args.kernel or newest_kernel()
    if not kernel:
        print("run.py: no /boot/vmlinuz-* (ci/setup installs linux-image-amd64)", file=sys.stderr)
        return 2
    virtme = shutil.which("virtme-run")
    if not virtme:
        print("run.py: virtme-run not found (ci/setup installs virtme-ng)", file=sys.stderr)
        return 2
    binary = os.path.abspath(args.bin)
    if not os.access(binary, os.X_OK):
        print("run.py: no ferrothin binary at %s (cargo build)" % binary, file=sys.stderr)
        return 2

    out = os.path.abspath(args.out) if args.out else tempfile.mkdtemp(prefix="ferrothin-lab-")
    os.makedirs(out, exist_ok=True)
    # A reused directory loses what an earlier run left, and nothing else.
    for f in ["results", "env.sh", "console.txt", "kernel-console.txt", "dmesg.txt", "dmesg.txt.new"] + \
            [os.path.basename(p) for p in glob.glob(os.path.join(out, "dmesg-*"))]:
        try:
            os.unlink(os.path.join(out, f))
        except FileNotFoundError:
            pass
    # What the guest needs to know, as shell assignments (the kernel command
    # line, which carries the script, is short). The interpreter's directory
    # goes first on PATH so the guest finds the same python3 and pip scripts.
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    env = {
        "LAB_BIN": binary,
        "LAB_REPO": REPO,
        "LAB_SCENARIOS": " ".join(scripts),
        "LAB_SCENARIO_TIMEOUT": str(args.scenario_timeout),
        "LAB_TMPFS_MB": str(args.tmpfs_mb),
        "PATH": path,
    }
    # Scenario knobs (LAB_ORACLE_SEEDS, ...) pass through.
    for k, v in sorted(os.environ.items()):
        if k.startswith("LAB_") and k not in env:
            env[k] = v
    # Scenarios that ask for a machine of their own (an IOMMU, a PCI
    # device: `machine_options`) boot it apart; the rest share the default
    # machine, which is faster under software emulation.
    groups = []
    for n in scripts:
        probe = machine_options([n], out)
        IMAGES.clear()
        key = tuple(probe)
        for g in groups:
            if g[0] == key:
                g[1].append(n)
                break
        else:
            groups.append((key, [n]))
    groups.sort(key=lambda g: len(g[0]) > 0)

    print("lab: %s, ferrothin %s, scenarios: %s" % (os.path.basename(kernel), binary, " ".join(names)))
    print("lab: results in %s" % out)
    sys.stdout.flush()
    t0 = time.monotonic()
    console = open(os.path.join(out, "console.txt"), "ab")
    kernel_console = open(os.path.join(out, "kernel-console.txt"), "ab")
    timed_out, returncode = False, 0
    for _, group in groups:
        env["LAB_SCENARIOS"] = " ".join(group)
        with open(os.path.join(out, "env.sh"), "w") as f:
            for k, v in env.items():
                f.write("%s=%s\n" % (k, shlex.quote(v)))
        cmd = [
            virtme, "--kimg", kernel, "--mods=auto",
            "--memory", str(args.memory), "--cpus", str(args.cpus),
            # KVM hangs before the kernel prints anything on these machines;
            # software emulation works.
            "--disable-kvm",
            "--rwdir", out,
            "--script-sh", "bash %s %s" % (shlex.quote(os.path.join(HERE, "guest.sh")), shlex.quote(out)),
        ]
        cmd += machine_options(group, out)
        left = args.timeout - (time.monotonic() - t0)
        timed_out, code = boot(cmd, console, kernel_console, max(left, 1))
        for img in IMAGES:
            os.unlink(img)
        IMAGES.clear()
        returncode = returncode or code
        if timed_out:
            break
    console.close()
    kernel_console.close()
    wall = time.monotonic() - t0
    proc_returncode = returncode

    results = []
    try:
        with open(os.path.join(out, "results")) as f:
            results = [line.split() for line in f if line.strip()]
    except FileNotFoundError:
        pass
    names_done = [r[0] for r in results]
    failed = [r[0] for r in results if r[1] != "pass"]
    missing = [os.path.basename(n)[:-3] if n.endswith(".sh") else n for n in scripts]
    missing = [n for n in missing if n not in names_done]

    print("\nlab: summary (guest %s, %.0f s wall)" % (
        "timed out" if timed_out else "exit status %d" % proc_returncode, wall))
    for r in results:
        print("lab:   %-28s %s (%s s)" % (r[0], r[1], r[2]))
    for n in missing:
        print("lab:   %-28s did not finish" % n)

    ok = not timed_out and proc_returncode == 0 and not failed and not missing
    if not ok:
        for n in failed:
            p = os.path.join(out, "dmesg-" + n)
            if os.path.exists(p):
                print("\nlab: kernel log while %s ran:" % n)
                sys.stdout.write(open(p, errors="replace").read())
        if missing or not results:
            # The guest copies its kernel log out every few seconds.
            p = os.path.join(out, "dmesg.txt")
            if os.path.exists(p):
                print("\nlab: the guest's kernel log (last 300 lines):")
                sys.stdout.write("".join(open(p, errors="replace").readlines()[-300:]))
            else:
                print("\nlab: no kernel log from the guest; its console (stderr of virtme-run):")
                try:
                    with open(os.path.join(out, "kernel-console.txt"), errors="replace") as f:
                        sys.stdout.write(f.read()[-20000:])
                except OSError as e:
                    print("lab: %s" % e)
        print("lab: FAILED; everything is in %s" % out)
    sys.stdout.flush()
    if timed_out or (proc_returncode != 0 and not results) or missing:
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
