//! The Debian package (scripts/package-deb, docs/design/100 §5): built from the debug
//! binaries already in the target directory, its control data and file list checked,
//! extracted, its config checked by the packaged csv-node, and its units verified by
//! `systemd-analyze verify` where systemd-analyze exists.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn run(c: &mut Command) -> Output {
    let o = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        o.status.success(),
        "{c:?}: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

#[test]
fn the_deb_holds_binaries_units_and_config_and_its_units_verify() {
    if !have("dpkg-deb") {
        eprintln!("skipped: dpkg-deb is not installed");
        return;
    }
    // The binaries next to this test executable (target/debug): built by scripts/test
    // before the tests, or by `cargo build --workspace --bins`.
    for b in ["csv-node", "csvadm", "csv-chaos"] {
        csv_tests::binary(b);
    }
    let bin_dir = csv_tests::binary("csv-node")
        .parent()
        .expect("bin dir")
        .to_path_buf();
    assert!(
        bin_dir.ends_with("debug"),
        "package-deb --debug packages target/debug: {}",
        bin_dir.display()
    );
    let out = tempfile::tempdir().expect("tempdir");
    let o = run(Command::new(workspace().join("scripts/package-deb"))
        .args(["--debug", "--no-build", "--out"])
        .arg(out.path())
        .current_dir(workspace()));
    let deb = PathBuf::from(text(&o).lines().last().expect("the .deb path").trim());
    assert!(deb.exists(), "{}", deb.display());

    let info = text(&run(Command::new("dpkg-deb").arg("-I").arg(&deb)));
    for want in [
        "Package: csv",
        "Version: 0.1.0",
        "Depends: ",
        "librocksdb",
        "systemd",
        "conffiles",
        "postinst",
    ] {
        assert!(info.contains(want), "dpkg-deb -I lacks {want:?}:\n{info}");
    }
    let files = text(&run(Command::new("dpkg-deb").arg("-c").arg(&deb)));
    for want in [
        "./usr/bin/csv-node",
        "./usr/bin/csvadm",
        "./usr/bin/csv-chaos",
        "./usr/lib/systemd/system/csv-node.service",
        "./usr/lib/systemd/system/csv-node-export@.socket",
        "./usr/lib/systemd/system/csv-node-export@.service",
        "./usr/lib/sysusers.d/csv.conf",
        "./usr/lib/tmpfiles.d/csv.conf",
        "./etc/csv/node.toml",
        "./usr/share/doc/csv/examples/node.example.toml",
        "./usr/share/doc/csv/security.md",
    ] {
        assert!(
            files.lines().any(|l| l.ends_with(want)),
            "dpkg-deb -c lacks {want}:\n{files}"
        );
    }
    assert!(
        files.contains("root/root"),
        "files are owned by root:\n{files}"
    );

    let root = out.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let cfg = std::fs::read_to_string(root.join("etc/csv/node.toml")).expect("config");
    for want in [
        "\nwatchdog = true\n",
        "\nadmin_socket = \"/run/csv/admin.sock\"\n",
        "\nread_only_group = \"csv-ro\"\n",
    ] {
        assert!(cfg.contains(want), "node.toml lacks {want:?}");
    }
    // The packaged binary accepts the packaged config (the csv-ro group is the package's
    // own, created on install: checked here against a group this host has).
    // Its certificates: node 1's, from a CA made here, where the config expects them.
    let tls = out.path().join("tls");
    csv_tls::pki::init_ca(&tls, "packaging test", 2).expect("ca");
    csv_tls::pki::issue_node(&tls, 1, &[], 2).expect("node 1");
    let tls_dir = format!("{}/", tls.display());
    let probe = out.path().join("node.toml");
    std::fs::write(
        &probe,
        cfg.replace("read_only_group = \"csv-ro\"", "read_only_group = \"0\"")
            .replace("/etc/csv/tls/", &tls_dir),
    )
    .expect("write");
    let o = run(Command::new(root.join("usr/bin/csv-node"))
        .args(["check-config", "--config"])
        .arg(&probe));
    assert_eq!(text(&o).trim(), "ok");

    verify_units(&root);
}

/// `systemd-analyze verify` on the extracted units, with the extracted binaries first on
/// PATH (verify checks that `ExecStart=` binaries exist and are executable: the units
/// name /usr/bin/csv-node, so it is checked in a copy whose paths point into the tree).
fn verify_units(root: &Path) {
    if !have("systemd-analyze") {
        eprintln!("skipped: systemd-analyze is not installed (units not verified)");
        return;
    }
    let units = root.join("usr/lib/systemd/system");
    let check = root.join("verify");
    std::fs::create_dir_all(&check).expect("verify dir");
    let bin = root.join("usr/bin");
    let bin = bin.to_str().expect("utf-8 path");
    let mut names = Vec::new();
    for e in std::fs::read_dir(&units).expect("units") {
        let e = e.expect("entry");
        let name = e.file_name().into_string().expect("utf-8 name");
        let unit = std::fs::read_to_string(e.path()).expect("unit");
        std::fs::write(
            check.join(&name),
            unit.replace("/usr/bin/", &format!("{bin}/")),
        )
        .expect("write unit");
        // A template is verified as an instance.
        names.push(name.replace("@.", "@test."));
    }
    names.sort();
    // Instances of the templates: symlinks named as the instance.
    for n in names.iter().filter(|n| n.contains("@test.")) {
        std::os::unix::fs::symlink(check.join(n.replace("@test.", "@.")), check.join(n))
            .expect("instance link");
    }
    let mut c = Command::new("systemd-analyze");
    c.args(["verify", "--man=no"]).current_dir(&check);
    for n in &names {
        c.arg(check.join(n));
    }
    let path = std::env::var("PATH").unwrap_or_default();
    c.env("PATH", format!("{bin}:{path}"));
    let o = c.output().expect("systemd-analyze");
    let err = String::from_utf8_lossy(&o.stderr);
    // Lines about the host's own units (verify loads their dependencies too) are not ours.
    let ours: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("csv") || l.contains(check.to_str().unwrap_or("verify")))
        .collect();
    assert!(
        o.status.success() && ours.is_empty(),
        "systemd-analyze verify {names:?}: {}\n{err}",
        o.status
    );
}
