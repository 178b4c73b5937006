//! Appliance images (`tandem image build|run|check`) with the real tools: build the sample
//! appliance, validate its libvirt XML with `virt-xml-validate` (missing, it fails the test),
//! check its manifest and catch a modified file, rebuild it and compare bytes, boot it with
//! `tandem image run` and serve NBD from it (nbdinfo, qemu-io write and read back), and
//! authenticate on its management port with the directory's key file, which no other file,
//! no QEMU argv and no console line shows; bad descriptions fail naming the key; the pair
//! sample builds both nodes, each with its own key file, and a region whose header parses.
//!
//! Every wait is bounded and waits on something observable (a line on `tandem image run`'s
//! stderr, a process exit).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tandem_qemu::appliance::{self, config, disk, manifest, BuildOptions};
use tandem_tests::*;

fn example(name: &str) -> PathBuf {
    workspace_root().join("examples").join(name)
}

fn opts() -> BuildOptions {
    BuildOptions::from_env(Some(guest_image().to_path_buf()))
}

fn has_tool(name: &str) -> bool {
    tandem_qemu::qemu_bin::find_in_path(
        std::ffi::OsStr::new(name),
        std::env::var_os("PATH").as_deref(),
    )
    .is_some()
}

/// `virt-xml-validate FILE`; a missing tool fails the test (scripts/deps installs it).
fn validate_xml(file: &Path) {
    for tool in ["virt-xml-validate", "xmllint"] {
        assert!(
            has_tool(tool),
            "{tool} not installed (packages libvirt-clients, libxml2-utils): the libvirt XML \
             cannot be validated; run scripts/deps"
        );
    }
    let out = Command::new("virt-xml-validate")
        .arg(file)
        .output()
        .expect("run virt-xml-validate");
    assert!(
        out.status.success(),
        "{} does not validate:\n{}{}\n{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(file).unwrap_or_default()
    );
}

/// `tandem image build` (the release binary: hashing the disks is the user's path and
/// fast there); panics with its output on failure.
fn build_cli(config: &Path, out: &Path) {
    let st = Command::new(tandem_bin())
        .args(["image", "build", "--config"])
        .arg(config)
        .arg("--out")
        .arg(out)
        .arg("--image")
        .arg(guest_image())
        .output()
        .expect("run tandem image build");
    assert!(
        st.status.success(),
        "tandem image build --config {}: {}{}",
        config.display(),
        String::from_utf8_lossy(&st.stdout),
        String::from_utf8_lossy(&st.stderr)
    );
}

/// `tandem image check [--booted] DIR`: its exit code and the difference lines it printed.
fn check_cli(dir: &Path, booted: bool) -> (Option<i32>, Vec<String>) {
    let mut c = Command::new(tandem_bin());
    c.args(["image", "check"]).arg(dir);
    if booted {
        c.arg("--booted");
    }
    let st = c.output().expect("run tandem image check");
    let lines = String::from_utf8_lossy(&st.stderr)
        .lines()
        .filter_map(|l| l.strip_prefix("  ").map(str::to_string))
        .collect();
    (st.status.code(), lines)
}

fn free_port() -> u16 {
    tandem_qemu::bench::nbd::free_port().expect("a free port")
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    std::fs::read(a).expect("read a") == std::fs::read(b).expect("read b")
}

/// The management key file `rel` of two builds: private (0600), the guest word, and a fresh
/// key in each build (a secret is never a reproducible output).
fn keys_are_private_and_fresh(one: &Path, two: &Path, rel: &str) -> tandem_qemu::mgmt::Key {
    use std::os::unix::fs::PermissionsExt;
    let mut keys = Vec::new();
    for d in [one, two] {
        let path = d.join(rel);
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{}", path.display());
        let key = tandem_qemu::mgmt::read_key(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("mgmt.key={}\n", key.to_hex()));
        keys.push(key);
    }
    assert_ne!(keys[0], keys[1], "two builds made the same key {rel}");
    keys.swap_remove(0)
}

/// The boot module at `path`: private (0600), its words the key's.
fn module_holds_key(path: &Path, key: &tandem_qemu::mgmt::Key) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", path.display());
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        text.starts_with(&format!("mgmt.key={}\n", key.to_hex())),
        "{}",
        path.display()
    );
}

/// No file in `dir` but the key files and boot modules names the key.
fn key_only_in_key_files(dir: &Path, key: &tandem_qemu::mgmt::Key) {
    for f in manifest::walk(dir).unwrap() {
        if f.ends_with(tandem_qemu::mgmt::KEY_FILE)
            || f.ends_with(tandem_qemu::run::BOOT_MODULE)
            || f.ends_with(".raw")
            || f.ends_with(".bin")
        {
            continue;
        }
        let bytes = std::fs::read(dir.join(&f)).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(&key.to_hex()),
            "{f} holds the management key"
        );
    }
}

/// Waits (bounded) until the file at `path` contains `needle`; returns its text.
fn wait_file_contains(path: &Path, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} not in {} within {timeout:?}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `tandem image run`, its stderr lines forwarded on a channel.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(dir: &Path, nbd: u16, mgmt: u16) -> Running {
        let mut child = Command::new(tandem_bin())
            .args(["image", "run"])
            .arg(dir)
            .args(["--nbd-port", &nbd.to_string(), "--mgmt-port"])
            .arg(mgmt.to_string())
            .args(["--timeout", "600"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tandem image run");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    fn wait_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.seen.push(line.clone());
                    if hit {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line containing {needle:?} from `tandem image run` within {timeout:?}; \
                     it said:\n{}",
                    self.seen.join("\n")
                ),
            }
            if Instant::now() >= deadline {
                panic!(
                    "no line containing {needle:?} within {timeout:?}; it said:\n{}",
                    self.seen.join("\n")
                );
            }
        }
    }

    /// SIGTERM (tandem stops QEMU in order), bounded; SIGKILL after.
    fn stop(&mut self) {
        let _ = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", self.child.id())])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

fn qemu_io(uri: &str, read_only: bool, cmds: &[&str]) -> String {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    if read_only {
        c.arg("-r");
    }
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    let out = c.arg(uri).output().expect("run qemu-io");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "qemu-io {cmds:?} {uri}: {text}");
    assert!(
        !text.contains("Pattern verification failed") && !text.contains("failed"),
        "qemu-io {cmds:?} {uri}: {text}"
    );
    text
}

#[test]
fn sample_appliance_builds_validates_rebuilds_and_serves_nbd() {
    let tmp = tandem_qemu::scratch::tempdir().unwrap();
    let d1 = tmp.path().join("one");
    let d2 = tmp.path().join("two");
    let d3 = tmp.path().join("three");
    build_cli(&example("appliance.toml"), &d1);

    // What is in it.
    for f in [
        "kernel.elf",
        "disk0.raw",
        "disk1.qcow2",
        "nvram.bin",
        "guest.cmdline",
        "run.sh",
        "domain.xml",
        "xl.cfg",
        "config.resolved.toml",
        "manifest.json",
    ] {
        assert!(d1.join(f).is_file(), "{f} missing");
    }
    let cmdline = std::fs::read_to_string(d1.join("guest.cmdline")).unwrap();
    assert!(
        cmdline.contains("export=data:blk0") && cmdline.contains("export=archive:blk1:ro"),
        "{cmdline}"
    );
    let label = disk::read_raw_label(&d1.join("disk0.raw")).unwrap();
    assert_eq!((label.name(), label.capacity), ("data", 64 << 20));
    let xml = std::fs::read_to_string(d1.join("domain.xml")).unwrap();
    assert!(xml.contains(&format!("<cmdline>{}</cmdline>", cmdline.trim())));
    let xl = std::fs::read_to_string(d1.join("xl.cfg")).unwrap();
    assert!(
        xl.contains("type = \"pvh\"") && xl.contains(&format!("extra = \"{}\"", cmdline.trim()))
    );
    let script = std::fs::read_to_string(d1.join("run.sh")).unwrap();
    assert!(
        script.contains(&format!("-append '{}'", cmdline.trim())),
        "{script}"
    );
    // Management on (the sample's default): the channel on the NIC, the key file by name.
    assert!(cmdline.contains("mgmt.on_data=on"), "{cmdline}");
    assert!(script.contains("-initrd boot.module"), "{script}");
    assert!(
        xml.contains("<initrd>/var/lib/tandem/tandem-demo/boot.module</initrd>"),
        "{xml}"
    );
    assert!(
        xl.contains("ramdisk = \"/var/lib/tandem/tandem-demo/boot.module\""),
        "{xl}"
    );
    // No path of this machine in the text files.
    let here = tmp.path().to_string_lossy().into_owned();
    for f in [
        "run.sh",
        "domain.xml",
        "xl.cfg",
        "manifest.json",
        "guest.cmdline",
    ] {
        let text = std::fs::read_to_string(d1.join(f)).unwrap();
        assert!(
            !text.contains(&here),
            "{f} names the build directory {here}"
        );
        assert!(!text.contains("/work/"), "{f} names a build-machine path");
    }
    validate_xml(&d1.join("domain.xml"));

    // The manifest lists every file; the directory matches it.
    let m1 = manifest::Manifest::load(&d1).unwrap();
    assert_eq!(m1.files.len(), 9);
    assert_eq!(check_cli(&d1, false), (Some(0), vec![]));

    // Rebuild from the same description: identical kernel, XML, xl, script, command line;
    // the manifest differs only in the lines of the generated-UUID files.
    build_cli(&example("appliance.toml"), &d2);
    for f in [
        "kernel.elf",
        "domain.xml",
        "xl.cfg",
        "run.sh",
        "guest.cmdline",
        "nvram.bin",
    ] {
        assert!(
            same_bytes(&d1.join(f), &d2.join(f)),
            "{f} differs between builds"
        );
    }
    let m2 = manifest::Manifest::load(&d2).unwrap();
    for (a, b) in m1.files.iter().zip(&m2.files) {
        assert_eq!(a.path, b.path);
        if a != b {
            assert!(
                ["disk0.raw", "disk1.qcow2", "config.resolved.toml"].contains(&a.path.as_str()),
                "{} differs between builds of one description",
                a.path
            );
        }
    }
    // From the resolved description (UUIDs given): every byte, manifest and disks included,
    // but the management key, a fresh secret in each build.
    build_cli(&d1.join(appliance::RESOLVED), &d3);
    let files = manifest::walk(&d1).unwrap();
    assert_eq!(files, manifest::walk(&d3).unwrap());
    let key_file = tandem_qemu::mgmt::KEY_FILE;
    let module = tandem_qemu::run::BOOT_MODULE;
    assert!(files.iter().any(|f| f == key_file), "{files:?}");
    for f in files.iter().filter(|f| *f != key_file && *f != module) {
        assert!(same_bytes(&d1.join(f), &d3.join(f)), "{f} differs");
    }
    let key = keys_are_private_and_fresh(&d1, &d3, key_file);
    module_holds_key(&d1.join(module), &key);
    key_only_in_key_files(&d1, &key);

    // A modified file, a missing one and an extra one are caught, and the command says so.
    std::fs::write(d2.join("run.sh"), "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::write(d2.join("stray.txt"), "x").unwrap();
    std::fs::remove_file(d2.join("xl.cfg")).unwrap();
    let (code, problems) = check_cli(&d2, false);
    assert_eq!(code, Some(1), "{problems:?}");
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(
        problems.iter().any(|p| p.starts_with("run.sh: size")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p == "xl.cfg: missing"),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p == "stray.txt: not in the manifest"),
        "{problems:?}"
    );
    // Same size, other bytes: the checksum catches it.
    let mut bytes = std::fs::read(d3.join("domain.xml")).unwrap();
    bytes[10] ^= 0x20;
    std::fs::write(d3.join("domain.xml"), &bytes).unwrap();
    let (code, p) = check_cli(&d3, false);
    assert_eq!(code, Some(1));
    assert!(
        p.len() == 1 && p[0].starts_with("domain.xml: sha256"),
        "{p:?}"
    );

    // The dry run shows the key file's name only.
    let dry = Command::new(tandem_bin())
        .args(["image", "run", "--dry-run"])
        .arg(&d1)
        .output()
        .expect("run tandem image run --dry-run");
    let dry_text = String::from_utf8_lossy(&dry.stdout);
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    assert!(
        dry_text.contains(&format!("-initrd {}", d1.join(module).display()))
            && !dry_text.contains(&key.to_hex()),
        "{dry_text}"
    );

    // Boot it and serve NBD from it.
    let (nbd, mgmt) = (free_port(), free_port());
    let mut run = Running::start(&d1, nbd, mgmt);
    let boot = Duration::from_secs(180);
    run.wait_line(&format!("nbd://127.0.0.1:{nbd}/data"), boot);
    run.wait_line(&format!("nbd://127.0.0.1:{nbd}/archive"), boot);
    // Its management port takes the directory's key, which is in no argv, on no console.
    let console = wait_file_contains(
        &d1.join("console.log"),
        "mgmt: control channel on tcp/10810",
        boot,
    );
    let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, mgmt));
    let reply = Duration::from_secs(30);
    let status = tandem_qemu::mgmt::command(addr, &key, "status", reply).unwrap();
    assert!(status.starts_with("ok restarts=0 "), "{status}");
    let wrong = tandem_qemu::mgmt::Key([0x55; 32]);
    assert!(tandem_qemu::mgmt::command(addr, &wrong, "status", reply).is_err());
    let pid = std::fs::read_to_string(d1.join("qemu.pid")).unwrap();
    let argv = std::fs::read(format!("/proc/{}/cmdline", pid.trim())).unwrap();
    let argv = String::from_utf8_lossy(&argv);
    assert!(
        argv.contains(module) && !argv.contains(&key.to_hex()),
        "{argv}"
    );
    assert!(!console.contains(&key.to_hex()), "{console}");
    let list = Command::new("nbdinfo")
        .args(["--list", &format!("nbd://127.0.0.1:{nbd}")])
        .output()
        .expect("run nbdinfo");
    let list_text = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert!(
        list_text.contains("export=\"data\"") && list_text.contains("export=\"archive\""),
        "{list_text}"
    );
    // data: 64M less the 1 MiB label area.
    let size = Command::new("nbdinfo")
        .args(["--size", &format!("nbd://127.0.0.1:{nbd}/data")])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&size.stdout).trim(),
        (63u64 << 20).to_string()
    );
    let data = format!("nbd://127.0.0.1:{nbd}/data");
    qemu_io(&data, false, &["write -P 0xa5 1M 128k", "flush"]);
    qemu_io(&data, true, &["read -P 0xa5 1M 128k", "read -P 0 0 64k"]);
    qemu_io(
        &format!("nbd://127.0.0.1:{nbd}/archive"),
        true,
        &["read -P 0 0 64k"],
    );
    // The read-only export refuses a write.
    let w = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 1 0 4k"])
        .arg(format!("nbd://127.0.0.1:{nbd}/archive"))
        .output()
        .unwrap();
    let wtext = format!(
        "{}{}",
        String::from_utf8_lossy(&w.stdout),
        String::from_utf8_lossy(&w.stderr)
    );
    assert!(
        !w.status.success() || wtext.contains("failed") || wtext.contains("read-only"),
        "a write to the read-only export went through: {wtext}"
    );
    run.stop();

    // Booted: the disks and NVRAM changed, everything else still matches; the runtime
    // state (console log, lock) is not an extra file.
    assert!(d1.join("console.log").is_file());
    assert_eq!(check_cli(&d1, true), (Some(0), vec![]));
    let (code, strict) = check_cli(&d1, false);
    assert_eq!(code, Some(1));
    assert!(
        strict.iter().any(|p| p.starts_with("disk0.raw")),
        "the guest wrote disk0: {strict:?}"
    );
}

#[test]
fn bad_descriptions_name_the_key() {
    let tmp = tandem_qemu::scratch::tempdir().unwrap();
    let disk = "[[disk]]\nname = \"data\"\nsize = \"16M\"\n";
    let cases: &[(&str, String, &[&str])] = &[
        (
            "unknown key",
            format!("name = \"t\"\nmemroy = \"64M\"\n{disk}"),
            &["unknown field `memroy`"],
        ),
        (
            "unknown key in a table",
            format!("name = \"t\"\n{disk}formt = \"raw\"\n"),
            &["unknown field `formt`"],
        ),
        (
            "disk too small",
            "name = \"t\"\n[[disk]]\nsize = \"1M\"\n".into(),
            &["disk[0].size", "label area"],
        ),
        (
            "export name clash",
            format!("name = \"t\"\n{disk}{disk}"),
            &["disk[1].name", "clash", "disk[0]"],
        ),
        (
            "pair without a peer",
            "name = \"t\"\n[pair]\n[[pair.a.disk]]\nsize = \"16M\"\n".into(),
            &["pair.b", "peer"],
        ),
        (
            "bad size",
            "name = \"t\"\n[[disk]]\nsize = \"12 parsecs\"\n".into(),
            &["disk[0].size", "invalid size"],
        ),
        (
            "bad address",
            format!("name = \"t\"\n[network]\nip = \"10.0.2.0/24\"\n{disk}"),
            &["network.ip", "network's own"],
        ),
        (
            "gateway off the network",
            format!("name = \"t\"\n[network]\nip = \"10.1.0.5/24\"\ngateway = \"10.2.0.1\"\n{disk}"),
            &["network.gateway"],
        ),
        (
            "nvram not a power of two",
            format!("name = \"t\"\n[nvram]\nsize = \"24M\"\n{disk}"),
            &["nvram.size", "power of two"],
        ),
        (
            "pair disk counts differ",
            "name = \"t\"\n[pair]\n[[pair.a.disk]]\nsize = \"16M\"\n[[pair.b.disk]]\nsize = \"16M\"\n\
             [[pair.b.disk]]\nsize = \"16M\"\n"
                .into(),
            &["pair.b.disk", "same number"],
        ),
    ];
    for (i, (what, text, needles)) in cases.iter().enumerate() {
        let cfg = tmp.path().join(format!("c{i}.toml"));
        std::fs::write(&cfg, text).unwrap();
        let out = tmp.path().join(format!("out{i}"));
        let err = appliance::build_from_file(&cfg, &out, &opts())
            .map(|_| ())
            .expect_err(what);
        let msg = format!("{err:#}");
        for n in *needles {
            assert!(msg.contains(n), "{what}: {n:?} not in:\n{msg}");
        }
        assert!(
            !out.exists(),
            "{what}: a failed build left {}",
            out.display()
        );
    }

    // qcow2 without qemu-img: refused before anything is written, naming the key.
    let cfg = tmp.path().join("q.toml");
    std::fs::write(
        &cfg,
        format!("name = \"t\"\n{disk}[[disk]]\nname = \"q\"\nsize = \"16M\"\nformat = \"qcow2\"\n"),
    )
    .unwrap();
    let out = tmp.path().join("q");
    let no_qemu_img = BuildOptions {
        image: Some(guest_image().to_path_buf()),
        qemu_img: None,
    };
    let msg = format!(
        "{:#}",
        appliance::build_from_file(&cfg, &out, &no_qemu_img).unwrap_err()
    );
    assert!(
        msg.contains("disk[1].format") && msg.contains("qemu-img"),
        "{msg}"
    );
    assert!(!out.exists());

    // A non-empty output directory is refused (it may hold an appliance's data disks).
    let full = tmp.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("keep"), "x").unwrap();
    let msg = format!(
        "{:#}",
        appliance::build_from_file(&example("appliance.toml"), &full, &opts()).unwrap_err()
    );
    assert!(msg.contains("not empty"), "{msg}");
    assert_eq!(std::fs::read_to_string(full.join("keep")).unwrap(), "x");

    // The command: exit 1, the key on stderr.
    let cfg = tmp.path().join("c0.toml");
    let st = Command::new(tandem_bin())
        .args(["image", "build", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(tmp.path().join("cli"))
        .arg("--image")
        .arg(guest_image())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&st.stderr);
    assert_eq!(st.status.code(), Some(1), "{err}");
    assert!(err.contains("memroy") && err.contains("c0.toml"), "{err}");
}

#[test]
fn pair_sample_builds_both_nodes_and_a_region() {
    let tmp = tandem_qemu::scratch::tempdir().unwrap();
    let dir = tmp.path().join("pair");
    build_cli(&example("pair.toml"), &dir);
    let app = config::load(&dir.join(appliance::RESOLVED)).unwrap();
    let config::Kind::Pair(p) = &app.kind else {
        panic!("not a pair")
    };

    // The region: its header parses, with the resolved pair id.
    let region = std::fs::read(dir.join("region.bin")).unwrap();
    assert_eq!(region.len() as u64, p.region_size.bytes());
    let header = tandem_qemu::pair::layout::Header::parse(&region[..4096], region.len() as u64)
        .unwrap_or_else(|e| panic!("region header: {e:?}"));
    assert_eq!(Some(header.pair_id), p.id);

    for (n, peer, ip, peer_ip) in [
        ("a", "b", "10.77.0.10", "10.77.0.11"),
        ("b", "a", "10.77.0.11", "10.77.0.10"),
    ] {
        let node = dir.join(n);
        let words = std::fs::read_to_string(node.join("guest.cmdline")).unwrap();
        assert!(
            words.contains(&format!("ip={ip}/24"))
                && words.contains(&format!("pair={n}"))
                && words.contains(&format!("pair.peer_ip={peer_ip}"))
                && words.contains("pair.disks=1"),
            "{words}"
        );
        let label = disk::read_raw_label(&node.join("disk0.raw")).unwrap();
        assert_eq!(label.name(), "blk0");
        // Own disks first, then the peer's, in the script and the XML.
        let script = std::fs::read_to_string(node.join("run.sh")).unwrap();
        let own = script
            .find(&format!("filename={n}/disk0.raw"))
            .expect("own disk");
        let theirs = script
            .find(&format!("filename={peer}/disk0.raw"))
            .expect("peer disk");
        assert!(own < theirs, "{script}");
        assert!(script.contains("mem-path=region.bin"), "{script}");
        let xml = std::fs::read_to_string(node.join("domain.xml")).unwrap();
        let own = xml.find(&format!("/{n}/disk0.raw")).unwrap();
        let theirs = xml.find(&format!("/{peer}/disk0.raw")).unwrap();
        assert!(own < theirs && xml.contains("<shareable/>"), "{xml}");
        validate_xml(&node.join("domain.xml"));
        let xl = std::fs::read_to_string(node.join("xl.cfg")).unwrap();
        assert!(
            xl.contains(&format!("extra = \"{}\"", words.trim())),
            "{xl}"
        );
    }
    // The same command lines `tandem pair up` would give its nodes.
    let spec = tandem_qemu::appliance::render::pair_config(&app).unwrap();
    for n in tandem_qemu::pair::Node::ALL {
        let words = std::fs::read_to_string(dir.join(n.name()).join("guest.cmdline")).unwrap();
        assert_eq!(words.trim(), spec.guest_words(n).join(" "));
    }
    assert_eq!(check_cli(&dir, false), (Some(0), vec![]));

    // Rebuilt from its resolved description: identical, region and disks included, but each
    // node's management key: fresh in each build, and the two nodes' keys differ.
    let again = tmp.path().join("again");
    build_cli(&dir.join(appliance::RESOLVED), &again);
    let files = manifest::walk(&dir).unwrap();
    assert_eq!(files, manifest::walk(&again).unwrap());
    let keys = ["a/mgmt.key", "b/mgmt.key"];
    let modules = ["a/boot.module", "b/boot.module"];
    for f in files
        .iter()
        .filter(|f| !keys.contains(&f.as_str()) && !modules.contains(&f.as_str()))
    {
        assert!(same_bytes(&dir.join(f), &again.join(f)), "{f} differs");
    }
    let [ka, kb] = keys.map(|k| keys_are_private_and_fresh(&dir, &again, k));
    assert_ne!(ka, kb, "the nodes share a key");
    for (n, k) in [("a", &ka), ("b", &kb)] {
        module_holds_key(&dir.join(n).join("boot.module"), k);
        key_only_in_key_files(&dir, k);
        let script = std::fs::read_to_string(dir.join(n).join("run.sh")).unwrap();
        assert!(
            script.contains(&format!("-initrd {n}/boot.module")),
            "{script}"
        );
    }
}

/// `nbdinfo ARGS`, its status and its output (a missing nbdinfo fails naming it).
fn nbdinfo(args: &[&str]) -> (bool, String) {
    assert!(
        has_tool("nbdinfo"),
        "nbdinfo not installed (package libnbd-bin): run scripts/deps"
    );
    let out = Command::new("nbdinfo")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run nbdinfo");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_tls_appliance_carries_its_certificate_in_the_boot_module_and_serves_nbds() {
    let tmp = tandem_qemu::scratch::tempdir().unwrap();
    let creds = tmp.path().join("creds");
    tandem_qemu::tls::create(&creds, &[], tandem_qemu::tls::KeyKind::EcdsaP256).unwrap();
    let desc = tmp.path().join("tls.toml");
    std::fs::write(
        &desc,
        "name = \"tls-demo\"\n[tls]\ndir = \"creds\"\n[nvram]\nsize = \"16M\"\n\
         [[disk]]\nname = \"data\"\nsize = \"16M\"\n",
    )
    .unwrap();
    let dir = tmp.path().join("app");
    build_cli(&desc, &dir);

    // The certificate and key only in boot.module (0600), with the key's word; out of the
    // manifest, the rendered files and the resolved description.
    let server_key = std::fs::read_to_string(creds.join("server-key.pem")).unwrap();
    let key = tandem_qemu::mgmt::read_key(&dir.join(tandem_qemu::mgmt::KEY_FILE)).unwrap();
    let module = dir.join(tandem_qemu::run::BOOT_MODULE);
    module_holds_key(&module, &key);
    let text = std::fs::read_to_string(&module).unwrap();
    assert!(
        text.contains(&server_key) && text.contains("[tls."),
        "{text}"
    );
    let m = manifest::Manifest::load(&dir).unwrap();
    assert!(m.files.iter().all(|f| f.path != "boot.module"));
    for f in manifest::walk(&dir).unwrap() {
        if f == "boot.module" || f.ends_with(".raw") || f.ends_with(".bin") {
            continue;
        }
        let t = String::from_utf8_lossy(&std::fs::read(dir.join(&f)).unwrap()).into_owned();
        assert!(!t.contains(server_key.trim()), "{f} holds the TLS key");
    }
    let words = std::fs::read_to_string(dir.join("guest.cmdline")).unwrap();
    assert!(words.contains("nbd.tls=require"), "{words}");
    for f in ["run.sh", "domain.xml", "xl.cfg"] {
        let t = std::fs::read_to_string(dir.join(f)).unwrap();
        assert!(
            t.contains("boot.module") && t.contains("nbd.tls=require"),
            "{f}: {t}"
        );
    }
    assert_eq!(check_cli(&dir, false), (Some(0), vec![]));

    // Unreadable credentials: the build names the key.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"x\"\n[tls]\ndir = \"nowhere\"\n[[disk]]\nsize = \"8M\"\n",
    )
    .unwrap();
    let out = Command::new(tandem_bin())
        .args(["image", "build", "--config"])
        .arg(&bad)
        .arg("--out")
        .arg(tmp.path().join("bad"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("tls.dir"), "{err}");

    // Boot it: nbds:// with the CA works, plaintext is refused.
    let (nbd, mgmt) = (free_port(), free_port());
    let mut run = Running::start(&dir, nbd, mgmt);
    run.wait_line("NBD export data", Duration::from_secs(180));
    let uri = format!(
        "nbds://127.0.0.1:{nbd}/data?tls-certificates={}",
        creds.display()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let (ok, out) = loop {
        let r = nbdinfo(&["--size", &uri]);
        if r.0 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(ok, "nbdinfo over TLS: {out}");
    assert_eq!(out.trim(), (15u64 << 20).to_string());
    let (ok, out) = nbdinfo(&["--size", &format!("nbd://127.0.0.1:{nbd}/data")]);
    assert!(
        !ok,
        "a plaintext client was served under nbd.tls=require: {out}"
    );
    run.stop();
    assert_eq!(check_cli(&dir, true), (Some(0), vec![]));
}
