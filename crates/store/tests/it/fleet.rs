//! The console's device list and fleet counts, on both backends.

use rampart_store::{
    DeviceQuery, DeviceSort, DeviceState, FleetSummary, IdMatch, NewDevice, Owner, Store,
};
use time::{Duration, OffsetDateTime};

use crate::store::{Backend, Postgres, Sqlite, cli, id, on_both};

on_both!(device_list_searches_filters_sorts_and_pages);

/// A device `name` whose certificate expires in `days`.
fn device(name: &str, n: u16, days: i64) -> NewDevice {
    let now = OffsetDateTime::now_utc();
    NewDevice {
        id: id(name),
        serial: format!("{n:04x}{}", "ef".repeat(14)),
        fingerprint: format!("{n:04x}{}", "12".repeat(30)),
        not_before: now,
        not_after: now + Duration::days(days),
        claim_code_hash: "hash".into(),
    }
}

fn ids(page: &rampart_store::DevicePage) -> Vec<&str> {
    page.devices.iter().map(|d| d.id.as_str()).collect()
}

async fn device_list_searches_filters_sorts_and_pages(backend: impl Backend) {
    let store = backend.open().await;
    assert_eq!(
        store.fleet_summary().await.expect("summary"),
        FleetSummary {
            total: 0,
            by_state: DeviceState::ALL.iter().map(|&s| (s, 0)).collect(),
            online: 0,
        }
    );
    // Five devices: greenhouse-1..3, barn-1, barn_2 (a LIKE wildcard in its id).
    for (n, (name, days)) in [
        ("greenhouse-1", 300),
        ("greenhouse-2", 20),
        ("greenhouse-3", 200),
        ("barn-1", 10),
        ("barn_2", 100),
    ]
    .into_iter()
    .enumerate()
    {
        store
            .create_device(device(name, n as u16, days), &cli())
            .await
            .expect("create");
    }
    // Registration times, contact and owners set directly, so that orders are known.
    backend
        .raw(
            "UPDATE devices SET created_at = 1000 WHERE id = 'barn_2';
             UPDATE devices SET created_at = 2000 WHERE id = 'greenhouse-3';
             UPDATE devices SET created_at = 3000 WHERE id = 'barn-1';
             UPDATE devices SET created_at = 4000 WHERE id = 'greenhouse-1';
             UPDATE devices SET created_at = 5000 WHERE id = 'greenhouse-2';
             UPDATE devices SET owner_type = 'user', owner_id = 'ann', state = 'bound'
                 WHERE id IN ('greenhouse-1', 'barn-1');",
        )
        .await
        .expect("arrange");
    let now = OffsetDateTime::now_utc();
    store
        .record_presence(&id("greenhouse-3"), true, now - Duration::minutes(5))
        .await
        .expect("presence");
    store
        .record_presence(&id("barn-1"), true, now - Duration::minutes(1))
        .await
        .expect("presence");
    store
        .record_presence(&id("barn-1"), false, now)
        .await
        .expect("presence");
    store
        .set_device_disabled(&id("barn_2"), true, &cli())
        .await
        .expect("disable");

    let q = |f: &dyn Fn(&mut DeviceQuery)| {
        let mut q = DeviceQuery {
            limit: 50,
            ..DeviceQuery::default()
        };
        f(&mut q);
        q
    };
    let page = store.query_devices(&q(&|_| {})).await.expect("all");
    assert_eq!(
        ids(&page),
        [
            "barn-1",
            "barn_2",
            "greenhouse-1",
            "greenhouse-2",
            "greenhouse-3"
        ]
    );
    assert_eq!((page.total, page.offset, page.limit), (5, 0, 50));

    // Search: prefix and substring, case ignored, wildcards literal.
    let cases: [(IdMatch, &[&str]); 5] = [
        (
            IdMatch::Prefix("GREEN".into()),
            &["greenhouse-1", "greenhouse-2", "greenhouse-3"],
        ),
        (IdMatch::Prefix("house".into()), &[]),
        (IdMatch::Contains("house-2".into()), &["greenhouse-2"]),
        (IdMatch::Contains("_".into()), &["barn_2"]),
        (IdMatch::Prefix("barn%".into()), &[]),
    ];
    for (m, want) in cases {
        let page = store
            .query_devices(&q(&|q| q.id = Some(m.clone())))
            .await
            .expect("search");
        assert_eq!(ids(&page), want, "{m:?}");
        assert_eq!(page.total, want.len() as u64, "{m:?}");
    }

    // Filters, alone and together.
    let page = store
        .query_devices(&q(&|q| q.state = Some(DeviceState::Bound)))
        .await
        .expect("state");
    assert_eq!(ids(&page), ["barn-1", "greenhouse-1"]);
    let page = store
        .query_devices(&q(&|q| q.online = Some(true)))
        .await
        .expect("online");
    assert_eq!(ids(&page), ["greenhouse-3"]);
    let page = store
        .query_devices(&q(&|q| q.online = Some(false)))
        .await
        .expect("offline");
    assert_eq!(page.total, 4);
    let page = store
        .query_devices(&q(&|q| q.owner = Some(Owner::User("ann".into()))))
        .await
        .expect("owner");
    assert_eq!(ids(&page), ["barn-1", "greenhouse-1"]);
    let page = store
        .query_devices(&q(&|q| q.owner = Some(Owner::Group("ann".into()))))
        .await
        .expect("owner group");
    assert_eq!(page.total, 0);
    let page = store
        .query_devices(&q(&|q| {
            q.cert_expires_before = Some(now + Duration::days(30));
        }))
        .await
        .expect("expiring");
    assert_eq!(ids(&page), ["barn-1", "greenhouse-2"]);
    let page = store
        .query_devices(&q(&|q| {
            q.cert_expires_before = Some(now + Duration::days(30));
            q.id = Some(IdMatch::Prefix("green".into()));
            q.state = Some(DeviceState::Unbound);
        }))
        .await
        .expect("combined");
    assert_eq!(ids(&page), ["greenhouse-2"]);

    // Firmware, as the devices last reported it on state/up.
    backend
        .raw(
            r#"INSERT INTO device_state (device_id, reported, updated_at) VALUES
                 ('greenhouse-1', '{"fw":"1.4.2","uptimeMs":5}', 1),
                 ('greenhouse-2', '{"fw":"1.4.2"}', 1),
                 ('barn-1', '{"fw":"1.5.0"}', 1),
                 ('barn_2', '[1, 2]', 1);"#,
        )
        .await
        .expect("reported states");
    let page = store
        .query_devices(&q(&|q| q.firmware = Some("1.4.2".into())))
        .await
        .expect("firmware");
    assert_eq!(ids(&page), ["greenhouse-1", "greenhouse-2"]);
    assert_eq!(page.total, 2);
    let page = store
        .query_devices(&q(&|q| q.firmware = Some("9.9.9".into())))
        .await
        .expect("no such firmware");
    assert_eq!(page.total, 0);

    // Orders, both directions; devices never seen come last either way.
    for (sort, descending, want) in [
        (
            DeviceSort::Id,
            true,
            [
                "greenhouse-3",
                "greenhouse-2",
                "greenhouse-1",
                "barn_2",
                "barn-1",
            ],
        ),
        (
            DeviceSort::Created,
            false,
            [
                "barn_2",
                "greenhouse-3",
                "barn-1",
                "greenhouse-1",
                "greenhouse-2",
            ],
        ),
        (
            DeviceSort::Created,
            true,
            [
                "greenhouse-2",
                "greenhouse-1",
                "barn-1",
                "greenhouse-3",
                "barn_2",
            ],
        ),
        (
            DeviceSort::CertExpiry,
            false,
            [
                "barn-1",
                "greenhouse-2",
                "barn_2",
                "greenhouse-3",
                "greenhouse-1",
            ],
        ),
        (
            DeviceSort::LastSeen,
            true,
            [
                "barn-1",
                "greenhouse-3",
                "greenhouse-2",
                "greenhouse-1",
                "barn_2",
            ],
        ),
        (
            DeviceSort::LastSeen,
            false,
            [
                "greenhouse-3",
                "barn-1",
                "barn_2",
                "greenhouse-1",
                "greenhouse-2",
            ],
        ),
    ] {
        let page = store
            .query_devices(&q(&|q| {
                q.sort = sort;
                q.descending = descending;
            }))
            .await
            .expect("sorted");
        assert_eq!(ids(&page), want, "{sort:?} descending={descending}");
    }

    // Pages of two: every device once, the total on every page.
    let mut seen = Vec::new();
    for offset in [0, 2, 4, 6] {
        let page = store
            .query_devices(&q(&|q| {
                q.sort = DeviceSort::CertExpiry;
                q.descending = true;
                q.limit = 2;
                q.offset = offset;
            }))
            .await
            .expect("page");
        assert_eq!((page.total, page.limit), (5, 2));
        assert!(page.devices.len() <= 2);
        seen.extend(page.devices.into_iter().map(|d| d.id.as_str().to_owned()));
    }
    assert_eq!(
        seen,
        [
            "greenhouse-1",
            "greenhouse-3",
            "barn_2",
            "greenhouse-2",
            "barn-1"
        ]
    );

    let summary = store.fleet_summary().await.expect("summary");
    assert_eq!(summary.total, 5);
    assert_eq!(summary.online, 1);
    assert_eq!(
        summary.by_state,
        [
            (DeviceState::Unbound, 2),
            (DeviceState::Bound, 2),
            (DeviceState::Disabled, 1),
            (DeviceState::Revoked, 0),
        ]
    );
    store.ping().await.expect("ping");
}
