//! Cost of one `Strategy::pick` for each strategy, at 3 and 100 backends, all eligible.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use proxy::balance::{build, PickContext, StrategyKind};
use proxy::upstream::Backend;

fn backends(n: u16) -> Vec<Arc<Backend>> {
    (0..n)
        .map(|i| {
            let addr = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 8000 + i));
            let b = Backend::new(format!("backend-{i}"), addr, 1 + u32::from(i % 3), false);
            // Some spread in the counters, as under load.
            b.stats
                .active
                .store(u64::from(i % 7), std::sync::atomic::Ordering::Relaxed);
            Arc::new(b)
        })
        .collect()
}

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for n in [3u16, 100] {
        let bs = backends(n);
        let eligible = |_: usize| true;
        for kind in StrategyKind::ALL {
            let strategy = build(kind, &bs, StrategyKind::LeastConn);
            let sticky_id = bs[bs.len() / 2].id.clone();
            group.bench_with_input(BenchmarkId::new(kind.as_str(), n), &n, |b, _| {
                // ip_hash sees a different client each pick; sticky_cookie a valid id.
                let mut client: u32 = 0x7f00_0001;
                b.iter(|| {
                    client = client.wrapping_add(1);
                    let ctx = PickContext {
                        client_ip: Some(IpAddr::V4(Ipv4Addr::from(client))),
                        sticky_id: (kind == StrategyKind::StickyCookie)
                            .then_some(sticky_id.as_str()),
                    };
                    black_box(strategy.pick(black_box(&bs), &eligible, black_box(&ctx)))
                });
            });
        }
        // The sticky path when the cookie is missing: the fallback's cost plus one lookup.
        let sticky = build(StrategyKind::StickyCookie, &bs, StrategyKind::LeastConn);
        group.bench_with_input(
            BenchmarkId::new("sticky_cookie_no_cookie", n),
            &n,
            |b, _| {
                b.iter(|| {
                    black_box(sticky.pick(black_box(&bs), &eligible, &PickContext::default()))
                });
            },
        );
    }
    group.finish();
}

fn cookie(c: &mut Criterion) {
    let signer = proxy::balance::CookieSigner::new(b"0123456789abcdef0123456789abcdef", "app");
    let value = signer.sign("backend-42");
    c.bench_function("cookie/sign", |b| {
        b.iter(|| black_box(signer.sign(black_box("backend-42"))))
    });
    c.bench_function("cookie/verify", |b| {
        b.iter(|| black_box(signer.verify(black_box(&value)).is_some()))
    });
}

criterion_group!(benches, pick, cookie);
criterion_main!(benches);
