//! A browser-like client for the console: cookies and CSRF tokens kept by
//! hand, so that tests can leave them out or forge them on purpose.

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::Server;

/// One answer: status, headers, body as text and as JSON (`Null` if not).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub body: Value,
}

impl Reply {
    /// `error.code`, or "".
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }

    /// A header as text, or "".
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The session cookie value set by this answer, if any.
    pub fn session_cookie(&self) -> Option<String> {
        let set = self.header("set-cookie");
        let value = set
            .strip_prefix("__Host-rampart_session=")?
            .split(';')
            .next()?;
        (!value.is_empty()).then(|| value.to_owned())
    }
}

/// A request being built.
#[derive(Debug, Clone)]
pub struct Req {
    method: Method,
    path: String,
    cookie: Option<String>,
    csrf: Option<String>,
    bearer: Option<String>,
    body: Option<(String, &'static str)>,
    headers: Vec<(String, String)>,
}

impl Req {
    pub fn new(method: Method, path: &str) -> Self {
        Self {
            method,
            path: path.to_owned(),
            cookie: None,
            csrf: None,
            bearer: None,
            body: None,
            headers: Vec::new(),
        }
    }

    pub fn get(path: &str) -> Self {
        Self::new(Method::GET, path)
    }

    pub fn post(path: &str) -> Self {
        Self::new(Method::POST, path)
    }

    pub fn json(mut self, v: Value) -> Self {
        self.body = Some((v.to_string(), "application/json"));
        self
    }

    pub fn raw(mut self, body: impl Into<String>) -> Self {
        self.body = Some((body.into(), "application/json"));
        self
    }

    pub fn form(mut self, pairs: &[(&str, &str)]) -> Self {
        let enc = |s: &str| -> String {
            s.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                        char::from(b).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect()
        };
        let body = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        self.body = Some((body, "application/x-www-form-urlencoded"));
        self
    }

    pub fn session(mut self, s: &Session) -> Self {
        self.cookie = Some(s.cookie.clone());
        self.csrf = Some(s.csrf.clone());
        self
    }

    /// The cookie only, without the CSRF header.
    pub fn cookie(mut self, cookie: &str) -> Self {
        self.cookie = Some(cookie.to_owned());
        self
    }

    pub fn csrf(mut self, token: Option<&str>) -> Self {
        self.csrf = token.map(str::to_owned);
        self
    }

    pub fn bearer(mut self, token: &str) -> Self {
        self.bearer = Some(token.to_owned());
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub async fn send(self, s: &Server) -> Reply {
        let mut r = s
            .browser
            .request(self.method, format!("https://{}{}", s.addr, self.path));
        if let Some(c) = &self.cookie {
            r = r.header("cookie", format!("__Host-rampart_session={c}"));
        }
        if let Some(t) = &self.csrf {
            r = r.header("x-csrf-token", t);
        }
        if let Some(t) = &self.bearer {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in &self.headers {
            r = r.header(k, v);
        }
        if let Some((body, ty)) = self.body {
            r = r.header("content-type", ty).body(body);
        }
        let response = r.send().await.expect("HTTPS request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        Reply {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }
}

/// A signed-in session as a browser holds it.
#[derive(Debug, Clone)]
pub struct Session {
    pub cookie: String,
    pub csrf: String,
}

impl Session {
    /// From a sign-in or setup answer.
    pub fn from_reply(r: &Reply) -> Self {
        Session {
            cookie: r.session_cookie().expect("a session cookie"),
            csrf: r.body["csrfToken"].as_str().expect("csrfToken").to_owned(),
        }
    }
}

/// A strong password for tests.
pub const PASSWORD: &str = "violet tractor sunrise 42";

impl Server {
    /// A fresh setup token, as `serve` prints it.
    pub async fn setup_token(&self) -> String {
        rampart_web::auth::issue_setup_token(&self.state)
            .await
            .expect("issue")
            .expect("no owner yet")
    }

    /// Creates the owner `owner` through the API and returns its session.
    pub async fn owner(&self) -> Session {
        let token = self.setup_token().await;
        let r = Req::post("/api/v1/setup")
            .json(json!({ "token": token, "name": "owner", "password": PASSWORD }))
            .send(self)
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        Session::from_reply(&r)
    }

    /// Signs `name` in with `password` (and `totp`).
    pub async fn login(&self, name: &str, password: &str, totp: Option<&str>) -> Reply {
        let mut body = json!({ "name": name, "password": password });
        if let Some(code) = totp {
            body["totp"] = json!(code);
        }
        Req::post("/api/v1/session").json(body).send(self).await
    }

    /// Invites `name` with `role` as `admin`, accepts the invitation and
    /// signs them in.
    pub async fn user(&self, admin: &Session, name: &str, role: &str) -> Session {
        let r = Req::post("/api/v1/users")
            .session(admin)
            .json(json!({ "name": name, "role": role }))
            .send(self)
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let token = r.body["inviteToken"].as_str().expect("invite").to_owned();
        let r = Req::post("/api/v1/invite")
            .json(json!({ "token": token, "password": PASSWORD }))
            .send(self)
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let r = self.login(name, PASSWORD, None).await;
        assert_eq!(r.status, 200, "{}", r.text);
        Session::from_reply(&r)
    }
}
