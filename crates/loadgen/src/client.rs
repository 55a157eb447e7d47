//! The MQTT client the scenarios use (`rampart-mqtt-client`), and connecting
//! many identities at once.

use std::sync::Arc;
use std::time::Duration;

pub use rampart_mqtt_client::{
    Client, ClientError, MqttVersion, Qos, SESSION_EXPIRY_SECS, SessionKind, Target,
};

use crate::LoadgenError;

/// Connect every identity in `ids` (loading its certificate from `certs`),
/// at most `concurrency` handshakes at a time. Results are in `ids` order,
/// each with the time from TCP connect to CONNACK.
pub async fn connect_many(
    target: &Target,
    certs: &crate::CertDir,
    ids: &[String],
    concurrency: usize,
    session: SessionKind,
) -> Vec<Result<(Client, Duration), LoadgenError>> {
    let limit = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, id) in ids.iter().enumerate() {
        let (target, certs, id, limit) = (
            target.clone(),
            certs.clone(),
            id.clone(),
            Arc::clone(&limit),
        );
        tasks.spawn(async move {
            let result = async {
                let _permit = limit
                    .acquire_owned()
                    .await
                    .map_err(|_| LoadgenError::Config("connection limiter closed".into()))?;
                let config = certs.client_config(&certs.load(&id)?, true)?;
                let started = tokio::time::Instant::now();
                let client = Client::connect(&target, config, &id, session).await?;
                Ok((client, started.elapsed()))
            }
            .await;
            (index, result)
        });
    }
    let mut results: Vec<Option<Result<(Client, Duration), LoadgenError>>> =
        (0..ids.len()).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, result)) => {
                if let Some(slot) = results.get_mut(index) {
                    *slot = Some(result);
                }
            }
            // A panicking connect task is a bug; its slot reports it below.
            Err(_join_error) => {}
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(LoadgenError::Protocol("connect task failed".into()))))
        .collect()
}
