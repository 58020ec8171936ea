//! Compiles the eBPF programs in `src/*.bpf.c` with clang (`-target bpf -O2 -g`)
//! and generates `abi_layout.rs`: the C layout of the structs in `aether_bpf.h`,
//! printed by a host program compiled from `src/abi_probe.c`, which `abi.rs`
//! checks its `#[repr(C)]` mirrors against at compile time.
//!
//! Needs clang (set `BPF_CLANG` to use another binary) and the headers of
//! libbpf-dev (`bpf/bpf_helpers.h`, `bpf/bpf_endian.h`) and of the kernel UAPI
//! (`linux/*.h`, `asm/types.h`); on Debian: `apt-get install clang libbpf-dev`.

use std::path::{Path, PathBuf};
use std::process::{exit, Command};

/// Programs under `src/`, and a test fixture the verifier must reject.
const PROGRAMS: &[&str] = &["xdp_policy", "reuseport", "testdata/rejected"];
const INCLUDE_ROOT: &str = "/usr/include";
const REQUIRED_HEADERS: &[(&str, &str)] = &[
    ("bpf/bpf_helpers.h", "libbpf-dev"),
    ("bpf/bpf_endian.h", "libbpf-dev"),
    ("linux/bpf.h", "linux-libc-dev"),
    ("linux/if_ether.h", "linux-libc-dev"),
    ("linux/ip.h", "linux-libc-dev"),
    ("linux/ipv6.h", "linux-libc-dev"),
    ("linux/tcp.h", "linux-libc-dev"),
    ("linux/udp.h", "linux-libc-dev"),
];

fn fail(message: &str) -> ! {
    eprintln!("error: bpf build script: {message}");
    println!("cargo:warning=bpf build script: {message}");
    exit(1);
}

fn run(command: &mut Command, what: &str) -> Vec<u8> {
    let output = match command.output() {
        Ok(output) => output,
        Err(error) => fail(&format!(
            "cannot run {what} ({command:?}): {error}; install clang (Debian: `apt-get install \
             clang libbpf-dev`) or set BPF_CLANG to a clang binary"
        )),
    };
    if !output.status.success() {
        fail(&format!(
            "{what} failed ({}): {command:?}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    output.stdout
}

/// The directory holding `asm/types.h` (Debian's multiarch layout), which
/// `-target bpf` does not search by itself.
fn asm_include_dir(clang: &str) -> PathBuf {
    let root = Path::new(INCLUDE_ROOT);
    if root.join("asm/types.h").exists() {
        return root.to_path_buf();
    }
    let multiarch = run(
        Command::new(clang).arg("-print-multiarch"),
        "clang -print-multiarch",
    );
    let multiarch = String::from_utf8_lossy(&multiarch).trim().to_string();
    let dir = root.join(&multiarch);
    if !dir.join("asm/types.h").exists() {
        fail(&format!(
            "asm/types.h not found in {INCLUDE_ROOT} nor in {} (kernel UAPI headers missing; \
             Debian: `apt-get install linux-libc-dev`)",
            dir.display()
        ));
    }
    dir
}

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let out_dir =
        PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_else(|| fail("OUT_DIR unset")));
    let src = manifest_dir.join("src");
    let clang = std::env::var("BPF_CLANG").unwrap_or_else(|_| "clang".to_string());
    println!("cargo:rerun-if-env-changed=BPF_CLANG");
    println!("cargo:rerun-if-changed=src/aether_bpf.h");
    println!("cargo:rerun-if-changed=src/abi_probe.c");

    run(
        Command::new(&clang).arg("--version"),
        &format!("{clang} (BPF C compiler)"),
    );
    for (header, package) in REQUIRED_HEADERS {
        let path = Path::new(INCLUDE_ROOT).join(header);
        if !path.exists() {
            fail(&format!(
                "missing header {} (Debian package {package})",
                path.display()
            ));
        }
    }
    let asm_dir = asm_include_dir(&clang);

    for program in PROGRAMS {
        let source = src.join(format!("{program}.bpf.c"));
        println!("cargo:rerun-if-changed=src/{program}.bpf.c");
        let object = out_dir.join(format!("{}.bpf.o", program.replace('/', "_")));
        run(
            Command::new(&clang)
                .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
                .arg("-I")
                .arg(&src)
                .arg("-idirafter")
                .arg(&asm_dir)
                .arg("-c")
                .arg(&source)
                .arg("-o")
                .arg(&object),
            &format!("clang -target bpf on {}", source.display()),
        );
    }

    // The layout probe runs on the build host; the structs use fixed-width
    // types only, whose layout is the same on the BPF target (the
    // _Static_asserts in aether_bpf.h check the BPF side).
    let probe = out_dir.join("abi_probe");
    run(
        Command::new(&clang)
            .args(["-O0", "-Wall", "-Werror"])
            .arg("-I")
            .arg(&src)
            .arg(src.join("abi_probe.c"))
            .arg("-o")
            .arg(&probe),
        "clang (host) on src/abi_probe.c",
    );
    let layout = run(&mut Command::new(&probe), "the ABI layout probe");
    if let Err(error) = std::fs::write(out_dir.join("abi_layout.rs"), layout) {
        fail(&format!("cannot write abi_layout.rs: {error}"));
    }
}
