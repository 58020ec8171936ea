//! `allowed_cpus` inside a real cpuset cgroup: a child process (this test
//! binary, re-run on the ignored probe test) is moved into a fresh cgroup
//! limited to one CPU, and must report exactly that CPU from both the
//! affinity mask and the cgroup file it finds through `/proc/self`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use numa::{allowed_cpus, cgroup_cpuset, format_cpu_list, parse_cpu_list};

const PROBE_ENV: &str = "AETHER_NUMA_CGROUP_PROBE";

/// The v1 cpuset hierarchy's mount point, or a v2 mount whose root offers the
/// cpuset controller; `None` when neither exists.
fn cpuset_mount() -> Option<(PathBuf, bool)> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut v2 = None;
    for line in mountinfo.lines() {
        let (before, after) = line.split_once(" - ")?;
        let mount_point = PathBuf::from(before.split(' ').nth(4)?);
        let mut right = after.split(' ');
        let fstype = right.next()?;
        let options = right.nth(1).unwrap_or("");
        if fstype == "cgroup" && options.split(',').any(|o| o == "cpuset") {
            return Some((mount_point, false));
        }
        if fstype == "cgroup2" {
            let controllers =
                std::fs::read_to_string(mount_point.join("cgroup.controllers")).unwrap_or_default();
            if controllers.split_whitespace().any(|c| c == "cpuset") {
                v2 = Some((mount_point, true));
            }
        }
    }
    v2
}

/// Removes the test cgroup when the test ends, however it ends.
struct CgroupGuard(PathBuf);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir(&self.0) {
            eprintln!("could not remove test cgroup {}: {e}", self.0.display());
        }
    }
}

#[test]
fn allowed_cpus_inside_a_cpuset_cgroup() {
    let allowed = allowed_cpus().unwrap();
    let Some(&target) = allowed.last() else {
        panic!("no allowed cpus");
    };
    if allowed.len() < 2 {
        eprintln!("SKIP allowed_cpus_inside_a_cpuset_cgroup: needs 2 allowed cpus to narrow, have {allowed:?}");
        return;
    }
    let Some((mount, v2)) = cpuset_mount() else {
        eprintln!("SKIP allowed_cpus_inside_a_cpuset_cgroup: no cpuset cgroup hierarchy (v1 cpuset or v2 with the cpuset controller) is mounted");
        return;
    };
    if v2 {
        // Children of the root get the controller only if it is delegated;
        // changing the root's subtree_control would outlive the test.
        let delegated =
            std::fs::read_to_string(mount.join("cgroup.subtree_control")).unwrap_or_default();
        if !delegated.split_whitespace().any(|c| c == "cpuset") {
            eprintln!(
                "SKIP allowed_cpus_inside_a_cpuset_cgroup: cpuset is not in {}/cgroup.subtree_control",
                mount.display()
            );
            return;
        }
    }
    let dir = mount.join(format!("aether-numa-test-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir(&dir) {
        eprintln!(
            "SKIP allowed_cpus_inside_a_cpuset_cgroup: cannot create {} ({e}); needs root",
            dir.display()
        );
        return;
    }
    let guard = CgroupGuard(dir);
    if !v2 {
        // v1 needs mems set before tasks may join.
        let mems = std::fs::read_to_string(mount.join("cpuset.mems")).unwrap();
        std::fs::write(guard.0.join("cpuset.mems"), mems.trim()).unwrap();
    }
    std::fs::write(guard.0.join("cpuset.cpus"), target.to_string()).unwrap();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "cgroup_child_probe", "--nocapture"])
        .env(PROBE_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    std::fs::write(guard.0.join("cgroup.procs"), child.id().to_string()).unwrap();
    // Release the child only once it is in the cgroup.
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "probe failed: {output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let probe = stdout
        .lines()
        // libtest may print "test cgroup_child_probe ... " on the same line.
        .find_map(|l| l.find("PROBE ").map(|i| &l[i + "PROBE ".len()..]))
        .unwrap_or_else(|| panic!("no PROBE line in {stdout}"));
    let field = |name: &str| {
        probe
            .split(' ')
            .find_map(|kv| kv.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {probe}"))
            .to_owned()
    };
    assert_eq!(parse_cpu_list(&field("allowed=")).unwrap(), vec![target]);
    assert_eq!(parse_cpu_list(&field("cgroup=")).unwrap(), vec![target]);
    assert!(field("path=").ends_with(&format!("aether-numa-test-{}", std::process::id())));
    drop(guard);
}

#[test]
#[ignore = "helper: run in a child process by allowed_cpus_inside_a_cpuset_cgroup"]
fn cgroup_child_probe() {
    assert_eq!(
        std::env::var(PROBE_ENV).as_deref(),
        Ok("1"),
        "run only by allowed_cpus_inside_a_cpuset_cgroup"
    );
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).unwrap();
    let allowed = allowed_cpus().unwrap();
    let cgroup = cgroup_cpuset(std::path::Path::new("/"))
        .unwrap()
        .unwrap_or_default();
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let path = cgroups
        .lines()
        .find(|l| l.contains(":cpuset:") || l.starts_with("0::"))
        .and_then(|l| l.rsplit(':').next())
        .unwrap_or("");
    println!(
        "PROBE allowed={} cgroup={} path={path}",
        format_cpu_list(&allowed),
        format_cpu_list(&cgroup)
    );
}
