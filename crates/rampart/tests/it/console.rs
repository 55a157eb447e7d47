//! First start of the console end to end: the real `rampart serve` prints
//! a one-time setup URL while no owner exists (a new one each start, the
//! earlier one void), the owner is created through it over real HTTPS
//! (trusting only Rampart's CA), and later starts print none.

use rampart_test_support::Workspace;
use rampart_test_support::https::client_trusting_without_redirects;
use serde_json::{Value, json};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The token of a `https://HOST:PORT/setup?token=...` URL.
fn token_of(url: &str) -> String {
    url.split_once("/setup?token=")
        .map(|(_, t)| t.to_owned())
        .unwrap_or_else(|| panic!("not a setup URL: {url}"))
}

#[test]
fn the_owner_is_created_through_the_printed_setup_url() {
    let ws = Workspace::new();
    ws.rampart().arg("init").assert().success();
    let client = client_trusting_without_redirects(&ws.ca_bundle());
    let rt = runtime();

    // First start: a URL; a restart: another, and the first is void.
    let mut serve = ws.serve(&[]);
    let http = serve.listening("http");
    let first = serve.setup_url();
    assert_eq!(
        first.split("/setup?").next(),
        Some(format!("https://{http}").as_str())
    );
    assert!(serve.terminate(), "serve stops cleanly");
    let mut serve = ws.serve(&[]);
    let http = serve.listening("http");
    let second = serve.setup_url();
    assert_ne!(token_of(&first), token_of(&second));
    assert!(
        !serve
            .seen()
            .iter()
            .any(|l| l.contains(&token_of(&second)) && !l.starts_with("setup url=")),
        "the setup token reached the log"
    );

    let setup = |token: String| {
        let client = client.clone();
        async move {
            let r = client
                .post(format!("https://{http}/api/v1/setup"))
                .header("content-type", "application/json")
                .body(
                    json!({ "token": token, "name": "owner", "password": "violet tractor sunrise 42" })
                        .to_string(),
                )
                .send()
                .await
                .expect("HTTPS");
            let status = r.status().as_u16();
            let cookie = r
                .headers()
                .get("set-cookie")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let text = r.text().await.unwrap_or_default();
            let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            (status, cookie, body)
        }
    };
    // The setup page itself opens from the printed URL.
    let page = rt
        .block_on(async { client.get(&second).send().await?.text().await })
        .expect("setup page");
    assert!(page.contains("Create owner account"), "{page}");

    let (status, _, body) = rt.block_on(setup(token_of(&first)));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("setup_token_invalid"))
    );
    let (status, cookie, body) = rt.block_on(setup(token_of(&second)));
    assert_eq!(status, 201, "{body}");
    assert!(
        cookie.starts_with("__Host-rampart_session=") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let session = cookie.split(';').next().expect("cookie pair").to_owned();
    let me = rt
        .block_on(async {
            client
                .get(format!("https://{http}/api/v1/me"))
                .header("cookie", &session)
                .send()
                .await?
                .text()
                .await
        })
        .expect("me");
    let me: Value = serde_json::from_str(&me).expect("JSON");
    assert_eq!(me["user"]["role"], "owner");
    let (status, _, body) = rt.block_on(setup(token_of(&second)));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("setup_done"))
    );
    assert!(serve.terminate());

    // With an owner, no setup URL any more.
    let mut serve = ws.serve(&[]);
    serve.listening("http");
    assert!(serve.terminate());
    assert!(
        !serve.seen().iter().any(|l| l.starts_with("setup url=")),
        "{:?}",
        serve.seen()
    );
    let audit = ws.rampart_json(&["audit", "list"]);
    let actions: Vec<&str> = audit
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["action"].as_str())
        .collect();
    assert!(actions.contains(&"user.setup_owner"), "{actions:?}");
}
