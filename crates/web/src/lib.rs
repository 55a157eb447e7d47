//! Rampart's web part: the HTTPS server and its routes.
//!
//! It owns the HTTP surface: TLS termination with the Rampart server
//! certificate and an optional client certificate checked against the CA
//! and CRL (reloadable), the connection limit, handshake and header
//! timeouts, the request body limit, JSON errors
//! (`{"error":{"code","message"}}`), request logging, and the routes: the
//! health check, the JSON API (device enrollment, accounts, users, API
//! tokens, devices, firmware, campaigns), firmware downloads for devices
//! (`/ota/v1/images`, decided by [`download`]) and the console pages,
//! behind one route table ([`ROUTES`]) that names each route's access rule
//! and one authorization function ([`auth::authorize`]).
//!
//! It must not hold domain logic: handlers parse the request, call the
//! provisioning or store crates, and map the answer to HTTP. It never logs
//! a secret (bearer tokens, claim codes, passwords, session ids, TOTP
//! secrets, download tokens: the request log has the path, never the
//! query).

pub mod alert_config;
mod audit_chain;
pub mod auth;
pub mod chart;
mod config;
pub mod devices;
pub mod download;
mod error;
pub mod inbox;
mod limit;
pub mod live;
pub mod metrics;
mod routes;
mod server;
mod state;
pub mod timespec;
mod tls;
pub mod ui;

pub use config::{MetricsToken, WebConfig};
pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use limit::FailureLimiter;
pub use metrics::{Monitoring, run_metrics};
pub use routes::openapi::openapi_json;
pub use routes::{Access, ROUTES, RouteSpec, Surface, router};
pub use server::run;
pub use state::{
    AppState, AuthBackend, CampaignBackend, CampaignDefaults, CrlPublisher, DeviceBackend,
    OtaBackend, WebMetrics,
};
pub use tls::{ClientTrust, PeerCertificate, ServerTls, TlsError};
