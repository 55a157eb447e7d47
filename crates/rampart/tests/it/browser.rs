//! The console in a real browser: headless Chromium (over WebDriver)
//! against the real `rampart serve`. From the printed setup URL the owner
//! is created in the form, signs out and in again, and visits account,
//! users, enrollment tokens (creating one in the UI), services and the
//! audit log; each page is checked for its content and saved as a
//! screenshot in `target/e2e-screenshots/`.
//!
//! Needs `chromium` and `chromium-driver` (installed by `.ci/run`); without
//! them the test fails and says so.

use fantoccini::Locator;
use rampart_test_support::Workspace;
use rampart_test_support::browser::{Browser, Window, server_spki_hash};

const PASSWORD: &str = "violet tractor sunrise 42";

async fn text_of(b: &Browser, css: &str) -> String {
    let url = b.client().current_url().await.map(|u| u.to_string());
    match b.client().find(Locator::Css(css)).await {
        Ok(e) => e.text().await.expect("text"),
        Err(e) => {
            let shot = b.screenshot("failure").await;
            panic!("no {css} on {url:?}: {e} (screenshot {})", shot.display())
        }
    }
}

async fn fill(b: &Browser, css: &str, value: &str) {
    let field = b.client().find(Locator::Css(css)).await.expect(css);
    field.clear().await.expect("clear");
    field.send_keys(value).await.expect("type");
}

/// Submits the form and waits for the next page: the old document goes
/// stale when the browser replaces it.
async fn submit(b: &Browser, form_css: &str) {
    let old = b.client().find(Locator::Css("html")).await.expect("page");
    b.client()
        .find(Locator::Css(&format!("{form_css} button[type=submit]")))
        .await
        .unwrap_or_else(|e| panic!("no submit button in {form_css}: {e}"))
        .click()
        .await
        .expect("click");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while old.tag_name().await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "submitting {form_css} loaded no new page"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    if b.client()
        .wait()
        .at_most(std::time::Duration::from_secs(15))
        .for_element(Locator::Css("footer"))
        .await
        .is_err()
    {
        let shot = b.screenshot("failure").await;
        let url = b.client().current_url().await.map(|u| u.to_string());
        let source = b.client().source().await.unwrap_or_default();
        panic!(
            "after submitting {form_css}, {url:?} is not a console page (screenshot {}):\n{}",
            shot.display(),
            source.chars().take(2000).collect::<String>()
        );
    }
}

async fn path_of(b: &Browser) -> String {
    b.client()
        .current_url()
        .await
        .expect("url")
        .path()
        .to_owned()
}

#[test]
fn the_console_works_in_a_browser() {
    let ws = Workspace::new();
    ws.rampart().arg("init").assert().success();
    // A signed bundle and its trusted key, for the firmware page's upload.
    let key = ws.join("release.key").display().to_string();
    ws.rampart_json(&["firmware", "keygen", "--out", &key]);
    ws.rampart_json(&[
        "firmware",
        "key",
        "add",
        &format!("{key}.pub"),
        "--name",
        "release-2026",
    ]);
    let image = ws.join("app.bin");
    std::fs::write(&image, vec![0x42u8; 40_000]).expect("image");
    let bundle = ws.join("app-1.4.0.rfw").display().to_string();
    ws.rampart_json(&[
        "firmware",
        "sign",
        &image.display().to_string(),
        "--key",
        &key,
        "--device-type",
        "rampart-sim",
        "--version",
        "1.4.0",
        "--security-version",
        "2",
        "--out",
        &bundle,
    ]);
    let mut serve = ws.serve(&[]);
    let http = serve.listening("http");
    let mqtt = serve.listening("mqtt");
    // A device of the firmware's type on an older version, for a campaign.
    let dev = ws.device("ota-dev-1");
    let mut pub_args = dev.mosquitto_args(mqtt);
    pub_args.extend(
        [
            "-t",
            "devices/ota-dev-1/state/up",
            "-q",
            "1",
            "-m",
            r#"{"fw":"1.3.0","type":"rampart-sim"}"#,
        ]
        .map(String::from),
    );
    let out = rampart_test_support::mosquitto("mosquitto_pub", &pub_args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let setup_url = serve.setup_url();
    let base = format!("https://{http}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let spki = server_spki_hash(http);
        let b = Browser::start(&spki, Window::Desktop).await;
        let c = b.client();

        // First start: the setup form from the printed URL.
        c.goto(&setup_url).await.expect("open setup URL");
        assert_eq!(text_of(&b, "h1").await, "Welcome to Rampart");
        b.screenshot("setup").await;
        fill(&b, "#name", "olivia").await;
        fill(&b, "#email", "olivia@example.com").await;
        fill(&b, "#password", PASSWORD).await;
        submit(&b, "form[action='/setup']").await;
        assert_eq!(path_of(&b).await, "/account");
        assert!(text_of(&b, ".who").await.contains("olivia · owner"));

        // Sign out and in again through the forms.
        c.goto(&format!("{base}/logout"))
            .await
            .expect("logout page");
        submit(&b, "form[action='/logout']").await;
        assert_eq!(path_of(&b).await, "/login");
        b.screenshot("login").await;
        fill(&b, "#name", "olivia").await;
        fill(&b, "#password", "not the password at all").await;
        submit(&b, "form[action='/login']").await;
        assert!(
            text_of(&b, ".flash.error").await.len() > 5,
            "a wrong password says so"
        );
        fill(&b, "#name", "olivia").await;
        fill(&b, "#password", PASSWORD).await;
        submit(&b, "form[action='/login']").await;
        assert_eq!(path_of(&b).await, "/account");
        assert_eq!(text_of(&b, "h1").await, "Account");
        let nav = text_of(&b, "nav.main").await;
        for link in ["Account", "Users", "Enroll tokens", "Services", "Audit"] {
            assert!(nav.contains(link), "navigation lacks {link}: {nav}");
        }
        b.screenshot("account").await;

        c.goto(&format!("{base}/users")).await.expect("users");
        assert_eq!(text_of(&b, "h1").await, "Users");
        assert!(text_of(&b, "table").await.contains("olivia"));
        b.screenshot("users").await;

        // An enrollment token made in the UI, shown once.
        c.goto(&format!("{base}/enroll-tokens"))
            .await
            .expect("tokens");
        assert_eq!(text_of(&b, "h1").await, "Enrollment tokens");
        fill(&b, "#uses", "5").await;
        fill(&b, "#prefix", "sensor-").await;
        submit(&b, "form[action='/enroll-tokens']").await;
        let secret = text_of(&b, "#new-token .secret").await;
        assert!(secret.starts_with("rmp_enr_"), "{secret}");
        let table = text_of(&b, "table").await;
        assert!(
            table.contains("0 / 5") && table.contains("sensor-"),
            "{table}"
        );
        b.screenshot("enroll-tokens").await;
        c.goto(&format!("{base}/enroll-tokens"))
            .await
            .expect("tokens");
        let page = c.source().await.expect("source");
        assert!(!page.contains(&secret), "the token is shown once only");

        // A service identity, its key shown once.
        c.goto(&format!("{base}/services")).await.expect("services");
        assert_eq!(text_of(&b, "h1").await, "Service identities");
        fill(&b, "#service-name", "billing-exporter").await;
        submit(&b, "form[action='/services']").await;
        assert!(
            text_of(&b, "#new-service")
                .await
                .contains("BEGIN PRIVATE KEY")
        );
        assert!(text_of(&b, "table").await.contains("billing-exporter"));
        b.screenshot("services").await;

        // The audit log shows what was just done, by whom, and verifies.
        c.goto(&format!("{base}/audit")).await.expect("audit");
        assert_eq!(text_of(&b, "h1").await, "Audit log");
        assert!(text_of(&b, "#chain").await.starts_with("Chain verified"));
        let log = text_of(&b, "table").await;
        for action in [
            "enrollment-token.create",
            "service.create",
            "user.setup_owner",
        ] {
            assert!(log.contains(action), "audit page lacks {action}: {log}");
        }
        b.screenshot("audit").await;
        fill(&b, "#f-action", "service.").await;
        submit(&b, "form.filters").await;
        let filtered = text_of(&b, "table").await;
        assert!(
            filtered.contains("service.create") && !filtered.contains("enrollment-token.create"),
            "{filtered}"
        );
        b.screenshot("audit-filtered").await;

        // Firmware: the bundle uploaded from the page (our script sends it
        // to the API with the CSRF token), then listed.
        c.goto(&format!("{base}/firmware")).await.expect("firmware");
        assert_eq!(text_of(&b, "h1").await, "Firmware");
        assert!(
            text_of(&b, "#firmware-list")
                .await
                .contains("No firmware uploaded yet")
        );
        c.find(Locator::Css("#bundle"))
            .await
            .expect("file input")
            .send_keys(&bundle)
            .await
            .expect("choose file");
        submit(&b, "#firmware-upload").await;
        let list = text_of(&b, "#firmware-list").await;
        assert!(
            list.contains("1.4.0") && list.contains("rampart-sim") && list.contains("release-2026"),
            "{list}"
        );
        b.screenshot("firmware").await;

        // Campaigns: the list and the new-campaign form offering it.
        c.goto(&format!("{base}/campaigns"))
            .await
            .expect("campaigns");
        assert_eq!(text_of(&b, "h1").await, "Update campaigns");
        b.screenshot("campaigns").await;
        c.goto(&format!("{base}/campaigns/new"))
            .await
            .expect("new campaign");
        assert!(
            text_of(&b, "#firmware_id")
                .await
                .contains("1.4.0 for rampart-sim")
        );
        b.screenshot("campaign-new").await;
        fill(&b, "#name", "first rollout").await;
        fill(&b, "#waves", "10, 100").await;
        submit(&b, "#campaign-form").await;
        // A draft for the one device reporting the type, waiting for approval.
        assert!(path_of(&b).await.starts_with("/campaigns/"));
        assert!(text_of(&b, "h1").await.contains("draft"));
        assert!(text_of(&b, "#devices").await.contains("ota-dev-1"));
        b.screenshot("campaign-draft").await;
        b.client()
            .find(Locator::Css("#actions a.button.danger"))
            .await
            .expect("emergency stop button")
            .text()
            .await
            .map(|t| assert_eq!(t, "Emergency stop (cancel)"))
            .expect("label");
        let approve = c
            .find(Locator::Css("#actions a.button:not(.danger)"))
            .await
            .expect("approve button");
        approve.click().await.expect("click approve");
        c.wait()
            .at_most(std::time::Duration::from_secs(15))
            .for_element(Locator::Css("#confirm"))
            .await
            .expect("the confirmation step");
        assert!(
            text_of(&b, "#confirm")
                .await
                .contains("Approve this campaign?")
        );
        submit(&b, "#confirm").await;
        assert!(text_of(&b, ".flash.ok").await.contains("Approved"));
        assert!(text_of(&b, "h1").await.contains("running"));
        b.screenshot("campaign-running").await;
        b.close().await;

        // The same console on a phone.
        let phone = Browser::start(&spki, Window::Phone).await;
        phone
            .client()
            .goto(&format!("{base}/login"))
            .await
            .expect("login");
        fill(&phone, "#name", "olivia").await;
        fill(&phone, "#password", PASSWORD).await;
        submit(&phone, "form[action='/login']").await;
        phone
            .client()
            .goto(&format!("{base}/audit"))
            .await
            .expect("audit");
        assert!(
            text_of(&phone, "#chain")
                .await
                .starts_with("Chain verified")
        );
        phone.screenshot("audit-phone").await;
        // The campaign on a phone: the emergency stop within reach.
        phone
            .client()
            .goto(&format!("{base}/campaigns/1"))
            .await
            .expect("campaign");
        assert!(text_of(&phone, "#actions").await.contains("Emergency stop"));
        phone.screenshot("campaign-phone").await;
        phone.close().await;
    });
    assert!(serve.terminate(), "serve stops cleanly");
}

/// Waits until the element `css` holds text for which `done` is true.
async fn wait_for_text(b: &Browser, css: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + rampart_test_support::wait_limit();
    loop {
        if let Ok(e) = b.client().find(Locator::Css(css)).await
            && let Ok(text) = e.text().await
            && done(&text)
        {
            return text;
        }
        if std::time::Instant::now() > deadline {
            let shot = b.screenshot("failure").await;
            panic!("{what}: {css} never did (screenshot {})", shot.display());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The device flow of issue 8 in a real browser: a simulated device streams
/// over MQTT; the owner, created from the setup URL, sees its reading arrive
/// live on the device page (server-sent events), claims it from its label
/// (the device confirms the nonce over MQTT), and revokes it, after which
/// the page shows it revoked and offline.
#[test]
fn a_device_is_watched_live_claimed_and_revoked_in_a_browser() {
    let mut p = crate::simulate::platform();
    let mut sim = p.one_connected_device("web");
    let identity: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(p.ws.join("state/devices/web-0001/identity.json"))
            .expect("identity"),
    )
    .expect("identity JSON");
    let label = identity["qrPayload"]
        .as_str()
        .expect("the label's QR payload")
        .to_owned();
    let base = format!("https://{}", p.http);
    let setup_url = p.serve.setup_url();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let b = Browser::start(&server_spki_hash(p.http), Window::Desktop).await;
        let c = b.client();
        c.goto(&setup_url).await.expect("open setup URL");
        fill(&b, "#name", "olivia").await;
        fill(&b, "#email", "olivia@example.com").await;
        fill(&b, "#password", PASSWORD).await;
        submit(&b, "form[action='/setup']").await;

        // The fleet overview and the device list know the device.
        c.goto(&format!("{base}/")).await.expect("overview");
        b.screenshot("fleet").await;
        c.goto(&format!("{base}/devices")).await.expect("devices");
        assert!(text_of(&b, "table").await.contains("web-0001"));
        b.screenshot("devices").await;

        // Its page follows it live: the latest reading arrives by SSE.
        c.goto(&format!("{base}/devices/web-0001"))
            .await
            .expect("device");
        let latest = wait_for_text(&b, "#latest", "a live reading", |t| {
            t.contains("temperature")
        })
        .await;
        assert!(latest.contains("humidity"), "{latest}");
        assert!(text_of(&b, "#presence-badge").await.contains("online"));
        b.screenshot("device-live").await;

        // Claim it from its label; the device confirms over MQTT.
        c.goto(&format!("{base}/claim")).await.expect("claim page");
        fill(&b, "#qr", &label).await;
        submit(&b, "#claim-form").await;
        let status = wait_for_text(&b, "#claim-status", "the claim is bound", |t| {
            t.contains("is now yours")
        })
        .await;
        assert!(status.contains("web-0001"), "{status}");
        b.screenshot("claim-bound").await;

        // The bell counts it on every page; the notifications page lists
        // it, and "Mark all read" clears the count.
        wait_for_text(&b, "#notify-badge", "the bell counts the claim", |t| {
            t == "1"
        })
        .await;
        c.goto(&format!("{base}/notifications"))
            .await
            .expect("notifications");
        assert!(text_of(&b, "main").await.contains("web-0001 is claimed"));
        b.screenshot("notifications").await;
        submit(&b, "form[action='/notifications/read']").await;
        wait_for_text(&b, "#notify-summary", "everything is read", |t| {
            t.contains("Nothing unread")
        })
        .await;

        // Revoke it, confirming; it is cut off at once.
        c.goto(&format!("{base}/devices/web-0001?confirm=revoke#confirm"))
            .await
            .expect("revoke confirmation");
        assert!(text_of(&b, "#confirm").await.contains("cannot be undone"));
        submit(&b, "#confirm").await;
        c.goto(&format!("{base}/devices/web-0001"))
            .await
            .expect("device");
        wait_for_text(&b, "#presence-badge", "the device goes offline", |t| {
            t.contains("offline")
        })
        .await;
        assert!(text_of(&b, "main").await.contains("revoked"));
        b.screenshot("device-revoked").await;
    });
    assert!(sim.terminate());
}

/// Alerts in a real browser (issue 10): a simulated device streams; the
/// owner adds a webhook channel (the danger flag ticked: the receiver is on
/// loopback) and a threshold rule in the forms; `serve`'s engine fires the
/// alert from the next reading; the alerts page lists it with a link to the
/// device, and "Acknowledge" records who. Screenshots on desktop and phone.
#[test]
fn alerts_are_configured_seen_and_acknowledged_in_a_browser() {
    let mut p = crate::simulate::platform();
    let mut sim = p.one_connected_device("alarm");
    let base = format!("https://{}", p.http);
    let setup_url = p.serve.setup_url();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let b = Browser::start(&server_spki_hash(p.http), Window::Desktop).await;
        let c = b.client();
        c.goto(&setup_url).await.expect("open setup URL");
        fill(&b, "#name", "olivia").await;
        fill(&b, "#email", "olivia@example.com").await;
        fill(&b, "#password", PASSWORD).await;
        submit(&b, "form[action='/setup']").await;
        assert!(text_of(&b, "nav.main").await.contains("Alerts"));

        // A channel: a loopback receiver needs the danger flag.
        c.goto(&format!("{base}/alert-rules"))
            .await
            .expect("rules page");
        assert!(text_of(&b, "#add-channel").await.contains("Dangerous"));
        fill(&b, "#channel-name", "lab").await;
        fill(&b, "#channel-url", "http://127.0.0.1:9/hook").await;
        submit(&b, "form[action='/alert-channels']").await;
        assert!(
            text_of(&b, ".flash.error").await.contains("private"),
            "a loopback URL without the flag is refused"
        );
        fill(&b, "#channel-name", "lab").await;
        fill(&b, "#channel-url", "http://127.0.0.1:9/hook").await;
        c.find(Locator::Css("input[name=allow_private]"))
            .await
            .expect("danger flag")
            .click()
            .await
            .expect("tick");
        submit(&b, "form[action='/alert-channels']").await;
        assert!(text_of(&b, ".flash.ok").await.contains("Channel lab added"));

        // A rule the simulated readings meet at once.
        fill(&b, "#rule-name", "alive").await;
        fill(&b, "#rule-expr", "temperature < 1000").await;
        submit(&b, "form[action='/alert-rules']").await;
        assert!(text_of(&b, ".flash.ok").await.contains("Rule alive added"));
        b.screenshot("alert-rules").await;

        // The engine fires it from the next reading.
        let deadline = std::time::Instant::now() + rampart_test_support::wait_limit();
        loop {
            c.goto(&format!("{base}/alerts")).await.expect("alerts");
            let firing = text_of(&b, "#firing").await;
            if firing.contains("alarm-0001") {
                break;
            }
            if std::time::Instant::now() > deadline {
                let shot = b.screenshot("failure").await;
                panic!("the alert never fired (screenshot {})", shot.display());
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        c.find(Locator::Css("#firing a[href='/devices/alarm-0001']"))
            .await
            .expect("a link to the device");
        b.screenshot("alerts").await;
        submit(&b, "#firing form").await;
        assert_eq!(path_of(&b).await, "/alerts");
        assert!(text_of(&b, "#firing").await.contains("olivia"));
        b.screenshot("alerts-acknowledged").await;
        b.close().await;

        let phone = Browser::start(&server_spki_hash(p.http), Window::Phone).await;
        phone
            .client()
            .goto(&format!("{base}/login"))
            .await
            .expect("login");
        fill(&phone, "#name", "olivia").await;
        fill(&phone, "#password", PASSWORD).await;
        submit(&phone, "form[action='/login']").await;
        phone
            .client()
            .goto(&format!("{base}/alerts"))
            .await
            .expect("alerts");
        phone.screenshot("alerts-phone").await;
        assert_eq!(text_of(&phone, "h1").await, "Alerts");
        phone
            .client()
            .find(Locator::Css("#firing a[href='/devices/alarm-0001']"))
            .await
            .expect("the alert on a phone");
    });
    assert!(sim.terminate());
}
