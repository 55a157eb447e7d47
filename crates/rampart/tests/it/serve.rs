//! `rampart serve` as a process: lock, live changes from the CLI, shutdown.

use rampart_test_support::{PgTestDb, Workspace};

#[test]
fn one_serve_per_data_dir_applies_cli_changes_and_stops_cleanly() {
    let ws = Workspace::new();
    let mut serve = ws.serve(&[]);
    serve.wait_for(&["rampart serve ready"]);
    assert!(
        ws.data_dir().join("pki/ca.crt").exists(),
        "serve initialised the data dir"
    );

    let err = ws.rampart_fails(&[
        "serve",
        "--mqtt-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
    ]);
    assert!(err.contains("already running"), "{err}");

    // The CLI writes while serve holds the database: no "locked" errors, and
    // serve picks the change up from the feed.
    let csr = ws.make_csr("live", "live-1", "ec");
    ws.rampart_json(&["device", "sign-csr", csr.to_str().expect("utf8")]);
    ws.rampart_json(&["device", "revoke", "live-1", "--reason", "key-compromise"]);
    serve.wait_for(&["change applied", "device.create", "live-1"]);
    serve.wait_for(&["change applied", "device.revoke", "live-1"]);

    assert!(serve.terminate(), "serve exits 0 on SIGTERM");
    assert!(
        serve.seen().iter().any(|l| l.contains("stopped")),
        "{:?}",
        serve.seen()
    );
    // The lock is released with the process.
    let mut again = ws.serve(&[]);
    again.wait_for(&["rampart serve ready"]);
    assert!(again.terminate());
}

#[test]
fn serve_on_postgresql_follows_changes_made_by_the_cli() {
    let Some(db) = PgTestDb::create_blocking() else {
        return;
    };
    // Trust auth ignores the password: it only has to stay out of the logs.
    let url = db
        .url()
        .replacen("://postgres@", "://postgres:pw-never-logged@", 1);
    let ws = Workspace::new();
    let mut serve = ws.serve(&[("RAMPART_STORE__URL", &url)]);
    let starting = serve.wait_for(&["rampart serve starting"]);
    assert!(starting.contains(db.name()), "{starting}");
    serve.wait_for(&["rampart serve ready"]);

    let csr = ws.make_csr("pg-live", "pg-live-1", "ec");
    for args in [
        vec!["device", "sign-csr", csr.to_str().expect("utf8")],
        vec![
            "device",
            "revoke",
            "pg-live-1",
            "--reason",
            "key-compromise",
        ],
    ] {
        let out = ws
            .rampart()
            .env("RAMPART_STORE__URL", &url)
            .args(&args)
            .output()
            .expect("run rampart");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serve.wait_for(&["change applied", "device.create", "pg-live-1"]);
    serve.wait_for(&["change applied", "device.revoke", "pg-live-1"]);
    assert!(serve.terminate(), "serve exits 0 on SIGTERM");
    assert!(
        !serve.seen().iter().any(|l| l.contains("pw-never-logged")),
        "{:?}",
        serve.seen()
    );
}
