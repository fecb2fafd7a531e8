//! Issue 15 item 3: the Debian package built (`scripts/package --profile dev`), its contents and
//! conffiles listed, installed with `dpkg -i`, its unit checked by `systemd-analyze verify`, the
//! installed binary checking the installed config and serving a fake primary, then removed and
//! purged cleanly. It changes the machine (a package, a system user), so it is `--ignored`:
//!
//! ```sh
//! cargo test --test package -- --ignored --nocapture     # as root, on Debian
//! ```
//!
//! It starts by purging any earlier install, so it can be run again. systemd is not PID 1 in a
//! container: the unit is verified offline and its enablement seen as the symlink
//! `deb-systemd-helper` makes; starting it through `systemctl` is not tested here.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::binary::Proxy;
use common::{pg_startup, FakePatroni, FakePg, Mode, PgMode};
use tokio::time::Instant;

const UNIT: &str = "/usr/lib/systemd/system/patroni-proxy.service";
const CONFIG: &str = "/etc/patroni-proxy/proxy.toml";
const WANTS: &str = "/etc/systemd/system/multi-user.target.wants/patroni-proxy.service";

fn run(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    eprintln!(
        "$ {cmd} {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ok(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(out.status.success(), "{cmd} {args:?}: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
#[ignore = "builds and installs a Debian package: root, dpkg, cargo-deb (see the module doc)"]
async fn the_package_builds_installs_serves_and_is_removed_cleanly() {
    let built = ok("scripts/package", &["--profile", "dev"]);
    let deb = built
        .lines()
        .last()
        .expect("the .deb's path")
        .trim()
        .to_string();

    // Every file the issue asks for, and the config as a conffile.
    let contents = ok("dpkg-deb", &["--contents", &deb]);
    for path in [
        "./usr/bin/patroni-proxy",
        "./etc/patroni-proxy/proxy.toml",
        "./usr/lib/systemd/system/patroni-proxy.service",
        "./usr/share/man/man1/patroni-proxy.1.gz",
        "./usr/share/bash-completion/completions/patroni-proxy",
        "./usr/share/zsh/vendor-completions/_patroni-proxy",
        "./usr/share/fish/vendor_completions.d/patroni-proxy.fish",
        "./usr/share/doc/patroni-proxy/changelog.gz",
        "./usr/share/doc/patroni-proxy/copyright",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(path)),
            "{path} not in the package:\n{contents}"
        );
    }
    let conffiles = ok("dpkg-deb", &["--info", &deb, "conffiles"]);
    assert_eq!(conffiles.trim(), CONFIG);

    // Installed from scratch.
    let _ = run("dpkg", &["--purge", "patroni-proxy"]);
    ok("dpkg", &["-i", &deb]);
    let checked = ok("/usr/bin/patroni-proxy", &["check", "--config", CONFIG]);
    assert!(checked.starts_with(&format!("{CONFIG}: OK")), "{checked}");
    // Readable by the service's user only (it may hold the stats password).
    let owner = ok("stat", &["-c", "%U:%G %a", CONFIG]);
    assert_eq!(owner.trim(), "root:patroni-proxy 640");
    ok("id", &["patroni-proxy"]);
    assert!(Path::new(WANTS).exists(), "not enabled: {WANTS} is missing");
    let man = ok("zcat", &["/usr/share/man/man1/patroni-proxy.1.gz"]);
    assert!(man.contains(".TH patroni-proxy 1"), "{man}");
    assert!(man.contains("SIGHUP"), "{man}");
    let bash =
        std::fs::read_to_string("/usr/share/bash-completion/completions/patroni-proxy").unwrap();
    assert!(bash.contains("import-haproxy"), "{bash}");
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let verified = run("systemd-analyze", &["verify", UNIT]);
        let said = String::from_utf8_lossy(&verified.stderr).into_owned();
        assert!(verified.status.success(), "{said}");
        // Warnings about this unit would show its name; those about the host's units do not.
        assert!(!said.contains("patroni-proxy.service:"), "{said}");
        let exposure = ok("systemd-analyze", &["security", "--offline=yes", UNIT]);
        eprintln!("{}", exposure.lines().last().unwrap_or_default());
    }

    // The installed binary serves a primary.
    let pg = FakePg::start(PgMode::Primary).await;
    let rest = FakePatroni::start(Mode::Primary { timeline: 1 }).await;
    let p = Proxy::start_installed("/usr/bin/patroni-proxy", pg.addr, rest.addr);
    let until = Instant::now() + Duration::from_secs(10);
    while pg_startup(p.listen, false).await.is_err() {
        assert!(Instant::now() < until, "the installed proxy never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(p);

    // Removed: the binary and unit go, the edited-or-not config stays until purge.
    ok("dpkg", &["-r", "patroni-proxy"]);
    assert!(!Path::new("/usr/bin/patroni-proxy").exists());
    assert!(!Path::new(UNIT).exists());
    assert!(Path::new(CONFIG).exists(), "a conffile outlives `dpkg -r`");
    ok("dpkg", &["--purge", "patroni-proxy"]);
    assert!(!Path::new(CONFIG).exists());
    assert!(!Path::new(WANTS).exists());
    let status = run("dpkg", &["-s", "patroni-proxy"]);
    assert!(!status.status.success(), "still known to dpkg after purge");
}
