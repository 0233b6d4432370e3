//! Property tests of the sync core on random states.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use proptest::prelude::*;
use tern::sync::state::{
    Attachment, Container, ContainerStatus, Health, Host, Id, Image, IpamPool, Mount, MountType, Network, Port,
    Protocol, RestartPolicy, Table, Volume,
};
use tern::sync::{ApplyError, Delta, State, apply, diff};

/// Keys come from a small pool, so two random states share many objects.
fn id() -> impl Strategy<Value = Id> {
    (0u8..12).prop_map(|i| Id([i; 32]))
}

fn word() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["", "web", "db", "api", "worker", "nginx:1.25", "postgres:16", "x".repeat(40).leak()])
        .prop_map(str::to_owned)
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(word(), word(), 0..4)
}

fn container() -> impl Strategy<Value = Container> {
    (
        (id(), word(), word(), prop::option::of(id()), prop::collection::vec(word(), 0..3), 0i64..2_000_000_000),
        (0usize..8, 0i64..2_000_000_000, 0i64..2_000_000_000, -1i32..256, 0usize..4, 0u32..5, word(), any::<bool>()),
        (labels(), prop::collection::vec(word(), 0..4)),
        (
            prop::collection::vec((1u16..65535, 0usize..3, prop::option::of(any::<u32>()), any::<u16>()), 0..3),
            prop::collection::vec((0usize..6, word(), word(), any::<bool>()), 0..3),
            prop::collection::vec((word(), prop::option::of(any::<u32>())), 0..3),
            0usize..4,
            0u32..5,
        ),
    )
        .prop_map(|(a, b, c, d)| {
            let statuses = [
                ContainerStatus::Unknown,
                ContainerStatus::Created,
                ContainerStatus::Running,
                ContainerStatus::Paused,
                ContainerStatus::Restarting,
                ContainerStatus::Removing,
                ContainerStatus::Exited,
                ContainerStatus::Dead,
            ];
            let healths = [Health::None, Health::Starting, Health::Healthy, Health::Unhealthy];
            let protocols = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];
            let mounts = [
                MountType::Bind,
                MountType::Volume,
                MountType::Tmpfs,
                MountType::Npipe,
                MountType::Cluster,
                MountType::Image,
            ];
            let policies =
                [RestartPolicy::No, RestartPolicy::Always, RestartPolicy::UnlessStopped, RestartPolicy::OnFailure];
            Container {
                id: a.0,
                name: a.1,
                image: a.2,
                image_id: a.3,
                command: a.4,
                created: a.5,
                status: statuses[b.0],
                started_at: b.1,
                finished_at: b.2,
                exit_code: b.3,
                health: healths[b.4],
                restart_count: b.5,
                error: b.6,
                oom_killed: b.7,
                labels: c.0,
                env: c.1,
                ports: d
                    .0
                    .into_iter()
                    .map(|(p, proto, ip, hp)| Port {
                        container_port: p,
                        protocol: protocols[proto],
                        host_ip: ip.map(|i| Ipv4Addr::from(i).into()),
                        host_port: hp,
                    })
                    .collect(),
                mounts: d
                    .1
                    .into_iter()
                    .map(|(k, s, dst, ro)| Mount { kind: mounts[k], source: s, destination: dst, read_only: ro })
                    .collect(),
                networks: d
                    .2
                    .into_iter()
                    .map(|(n, ip)| Attachment { network: n, ipv4: ip.map(Ipv4Addr::from), ipv6: None })
                    .collect(),
                restart_policy: policies[d.3],
                restart_max_retries: d.4,
            }
        })
}

fn image() -> impl Strategy<Value = Image> {
    (
        id(),
        prop::collection::vec(word(), 0..3),
        prop::collection::vec(word(), 0..2),
        any::<i64>(),
        any::<i64>(),
        labels(),
    )
        .prop_map(|(id, tags, digests, size, created, labels)| Image { id, tags, digests, size, created, labels })
}

fn volume() -> impl Strategy<Value = Volume> {
    ((0u8..12).prop_map(|i| format!("vol{i}")), word(), word(), labels(), any::<i64>(), word()).prop_map(
        |(name, driver, mountpoint, labels, created, scope)| Volume {
            name,
            driver,
            mountpoint,
            labels,
            created,
            scope,
        },
    )
}

fn network() -> impl Strategy<Value = Network> {
    (
        id(),
        word(),
        word(),
        word(),
        prop::collection::vec((word(), word()), 0..2),
        labels(),
        any::<[bool; 3]>(),
        any::<i64>(),
    )
        .prop_map(|(id, name, driver, scope, ipam, labels, flags, created)| Network {
            id,
            name,
            driver,
            scope,
            ipam: ipam
                .into_iter()
                .map(|(subnet, gateway)| IpamPool { subnet, gateway, ip_range: String::new() })
                .collect(),
            labels,
            internal: flags[0],
            attachable: flags[1],
            created,
            enable_ipv6: flags[2],
        })
}

fn host() -> impl Strategy<Value = Host> {
    (word(), word(), 0u32..64, any::<u64>()).prop_map(|(hostname, engine_version, cpus, memory_bytes)| Host {
        hostname,
        engine_version,
        cpus,
        memory_bytes,
        ..Host::default()
    })
}

fn state() -> impl Strategy<Value = State> {
    (
        host(),
        prop::collection::vec(container(), 0..10),
        prop::collection::vec(image(), 0..6),
        prop::collection::vec(volume(), 0..6),
        prop::collection::vec(network(), 0..4),
    )
        .prop_map(|(host, c, i, v, n)| State {
            host,
            containers: c.into_iter().collect::<Table<_>>(),
            images: i.into_iter().collect(),
            volumes: v.into_iter().collect(),
            networks: n.into_iter().collect(),
        })
}

/// Two states where `b` is `a` with some objects edited, removed and added,
/// as happens between two polls.
fn related_states() -> impl Strategy<Value = (State, State)> {
    (state(), state(), prop::collection::vec(any::<u8>(), 4)).prop_map(|(a, other, picks)| {
        let mut b = a.clone();
        for (i, c) in other.containers.iter().enumerate() {
            if picks[0] as usize % 3 == i % 3 {
                b.containers.insert(c.clone());
            }
        }
        let keys: Vec<Id> = a.containers.iter().map(|c| c.id).collect();
        for (i, k) in keys.iter().enumerate() {
            if picks[1] as usize % 4 == i % 4 {
                b.containers.remove(k);
            }
        }
        if picks[2] % 2 == 0 {
            for v in other.volumes.iter() {
                b.volumes.insert(v.clone());
            }
        }
        if picks[3] % 3 == 0 {
            b.host = other.host.clone();
        }
        (a, b)
    })
}

fn check_round_trip(a: &State, b: &State) -> Result<(), TestCaseError> {
    let delta = diff(a, b);
    let wire = Delta::decode(&delta.encode()).expect("own delta decodes");
    let applied = apply(a, &wire).map_err(|e| TestCaseError::fail(format!("apply failed: {e}")))?;
    prop_assert_eq!(&applied, b);
    prop_assert_eq!(applied.root(), b.root());
    prop_assert_eq!(delta.is_empty(), a == b);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn apply_of_diff_gives_the_target_for_unrelated_states(a in state(), b in state()) {
        check_round_trip(&a, &b)?;
    }

    #[test]
    fn apply_of_diff_gives_the_target_for_related_states((a, b) in related_states()) {
        check_round_trip(&a, &b)?;
    }

    #[test]
    fn a_state_against_itself_gives_an_empty_delta(a in state()) {
        let d = diff(&a, &a);
        prop_assert!(d.is_empty());
        prop_assert!(d.encode().is_empty());
    }

    #[test]
    fn a_tampered_root_is_rejected((a, b) in related_states(), bit in 0usize..64) {
        prop_assume!(a != b);
        let mut p = diff(&a, &b).encode();
        // The root is the first field: tag, length, then 8 bytes.
        prop_assert_eq!(&p[..2], &[0x0a, 8]);
        p[2 + bit / 8] ^= 1 << (bit % 8);
        prop_assert_eq!(apply(&a, &Delta::decode(&p).unwrap()), Err(ApplyError::RootMismatch));
    }

    #[test]
    fn a_delta_with_a_change_dropped_is_rejected((a, b) in related_states(), which in any::<prop::sample::Index>()) {
        prop_assume!(a != b);
        let full = diff(&a, &b);
        let (r, c, ad) = full.counts();
        let parts = r + c + ad;
        let i = which.index(parts);
        let tampered = tamper_drop(&full, i);
        prop_assert!(apply(&a, &tampered).is_err(), "dropping part {} of {} was accepted", i, parts);
    }

    #[test]
    fn a_flipped_byte_never_yields_a_state_other_than_the_senders(
        (a, b) in related_states(), pos in any::<prop::sample::Index>(), mask in 1u8..=255,
    ) {
        prop_assume!(a != b);
        let mut p = diff(&a, &b).encode();
        let i = pos.index(p.len());
        p[i] ^= mask;
        if let Ok(d) = Delta::decode(&p)
            && let Ok(s) = apply(&a, &d) {
                prop_assert_eq!(s, b);
            }
    }

    #[test]
    fn a_delta_applied_to_the_wrong_base_is_rejected((a, b) in related_states(), c in state()) {
        prop_assume!(a != b && c != a);
        let d = diff(&a, &b);
        if let Ok(s) = apply(&c, &d) {
            // Only possible when the same changes on another base lead to the same state.
            prop_assert_eq!(s, b);
        }
    }
}

/// Drops the `i`-th change (host patch, removal, patch or addition) of a delta.
fn tamper_drop(delta: &Delta, i: usize) -> Delta {
    tern::sync::delta::testing::drop_part(delta, i)
}
