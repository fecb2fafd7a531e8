use super::*;

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

fn reading(at_ms: u64, routed: bool, since: u64, total: u64) -> Reading {
    Reading {
        at_ms,
        nodes: vec![NodeReading::default(); 2],
        listeners: vec![ListenerReading::default()],
        routed,
        primary_since_ms: since,
        no_primary_total_ms: total,
    }
}

#[test]
fn the_memory_bound_is_the_documented_one() {
    // The figure in the module's doc comment and docs/dashboard.md.
    assert_eq!(std::mem::size_of::<NodeSample>(), 24);
    assert_eq!(std::mem::size_of::<ListenerSample>(), 20);
    let mut h = History::new(&names("node", 3), &names("l", 1));
    let gaps = GAPS * std::mem::size_of::<Gap>();
    assert_eq!(h.bytes(), 360_000 + gaps);
    assert_eq!(std::mem::size_of::<Gap>(), 88);
    assert_eq!(gaps, 5_632);
    // Recording more than an hour (and many gaps) never grows it.
    let mut r = reading(0, true, 0, 0);
    r.nodes = vec![NodeReading::default(); 3];
    let started = std::time::Instant::now();
    for s in 0..(SAMPLES as u64 + 500) {
        r.at_ms = s * 1000;
        r.routed = s % 10 != 0;
        r.primary_since_ms = s / 10 * 10_000 + u64::from(r.routed) * 1000;
        h.record(&r);
    }
    // The sampler's cost per second (printed, not asserted).
    println!(
        "History::record: {:?} per sample (3 nodes, 1 listener)",
        started.elapsed() / (SAMPLES as u32 + 500)
    );
    assert_eq!(h.bytes(), 360_000 + gaps);
    assert_eq!(h.times().len(), SAMPLES);
    assert_eq!(h.gaps().count(), GAPS);
    assert_eq!(
        h.times().next(),
        Some(500_000),
        "the oldest were overwritten"
    );
}

#[test]
fn rates_are_per_second_of_elapsed_time_and_saturate() {
    let mut h = History::new(&names("n", 2), &names("l", 1));
    let mut r = reading(10_000, true, 0, 0);
    r.nodes[0] = NodeReading {
        scur: 5,
        stot: 100,
        bin: 1000,
        bout: 5000,
        check: Some(Duration::from_micros(1500)),
        band: Band::Primary,
    };
    h.record(&r);
    // The first sample has nothing to compare with: no rate rather than the total.
    let first = h.nodes[0].1.last().unwrap();
    assert_eq!((first.new_sessions, first.bytes_in), (0, 0));
    assert_eq!((first.sessions, first.check_us), (5, 1500));
    // Two seconds later (a missed tick): the rate is per second, not per sample.
    r.at_ms = 12_000;
    r.nodes[0].stot = 110;
    r.nodes[0].bin = 3000;
    r.nodes[0].bout = 5000 + 2 * u64::from(u32::MAX) * 3;
    h.record(&r);
    let s = h.nodes[0].1.last().unwrap();
    assert_eq!(
        (s.new_sessions, s.bytes_in, s.bytes_out),
        (5, 1000, u32::MAX)
    );
    assert_eq!(s.band, Band::Primary);
    // Counters never go back, but a reading that did must not underflow.
    r.at_ms = 12_000;
    r.nodes[0].stot = 0;
    h.record(&r);
    assert_eq!(h.nodes[0].1.last().unwrap().new_sessions, 0);
    // A reading of another shape is ignored, not a panic.
    r.nodes.pop();
    h.record(&r);
    assert_eq!(h.times().len(), 3);
}

#[test]
fn a_gap_records_the_owners_times_and_what_its_held_clients_got() {
    let mut h = History::new(&names("n", 2), &names("l", 1));
    h.record(&reading(1_000, true, 0, 0));
    // Lost at 1_400 (a switchover: node 0 leaving); seen by the sample at 2_000.
    let mut r = reading(2_000, false, 1_400, 0);
    r.nodes[0].band = Band::Leaving;
    r.listeners[0].holds = Holds {
        holding: 2,
        held: 2,
        released: 0,
        refused: 0,
    };
    h.record(&r);
    let g = *h.gaps().last().unwrap();
    assert_eq!(
        (g.start_ms, g.end_ms, g.kind),
        (1_400, None, GapKind::Switchover)
    );
    assert_eq!(g.duration_ms(2_000), 600);
    assert_eq!(g.held, 2);
    // Still none at 3_000, one more client held, one refused after its hold_timeout.
    r.at_ms = 3_000;
    r.nodes[0].band = Band::Down;
    r.listeners[0].holds = Holds {
        holding: 2,
        held: 3,
        released: 0,
        refused: 1,
    };
    h.record(&r);
    assert_eq!(h.gaps().count(), 1, "the same gap");
    // A primary again since 3_250; the releases are counted a moment later.
    let mut r = reading(4_000, true, 3_250, 1_850);
    r.listeners[0].holds = Holds {
        holding: 1,
        held: 3,
        released: 1,
        refused: 1,
    };
    h.record(&r);
    r.at_ms = 5_000;
    r.listeners[0].holds.holding = 0;
    r.listeners[0].holds.released = 2;
    h.record(&r);
    let g = *h.gaps().last().unwrap();
    assert_eq!((g.start_ms, g.end_ms), (1_400, Some(3_250)));
    assert_eq!(g.duration_ms(99_999), 1_850, "exactly the owner's count");
    assert_eq!((g.held, g.released, g.refused), (3, 2, 1));
    // Settled: later counts belong to no gap.
    r.at_ms = 20_000;
    r.listeners[0].holds.released = 9;
    h.record(&r);
    assert_eq!(h.gaps().last().unwrap().released, 2);
}

#[test]
fn a_gap_between_two_samples_is_not_lost() {
    let mut h = History::new(&names("n", 2), &names("l", 1));
    h.record(&reading(1_000, true, 0, 0));
    // 300 ms without a primary ended at 1_700, all between two samples.
    h.record(&reading(2_000, true, 1_700, 300));
    let g = *h.gaps().last().unwrap();
    assert_eq!(
        (g.start_ms, g.end_ms, g.kind),
        (1_400, Some(1_700), GapKind::Failover)
    );
}

#[test]
fn a_start_up_over_before_the_first_sample_is_still_a_gap() {
    let mut h = History::new(&names("n", 2), &names("l", 1));
    h.record(&reading(1_000, true, 800, 300));
    let g = *h.gaps().last().unwrap();
    assert_eq!(
        (g.start_ms, g.end_ms, g.kind),
        (500, Some(800), GapKind::StartUp)
    );
}

#[test]
fn start_up_without_a_primary_is_a_gap_from_the_start() {
    let mut h = History::new(&names("n", 2), &names("l", 1));
    h.record(&reading(1_000, false, 500, 0));
    h.record(&reading(2_000, true, 1_800, 1_300));
    let g = *h.gaps().last().unwrap();
    assert_eq!((g.start_ms, g.end_ms), (500, Some(1_800)));
    assert_eq!(g.kind, GapKind::StartUp);
    // Lost again, then again before a sample saw the primary: two gaps, the first closed.
    h.record(&reading(3_000, false, 2_500, 1_300));
    h.record(&reading(4_000, false, 3_600, 2_000));
    let gaps: Vec<_> = h.gaps().copied().collect();
    assert_eq!(gaps.len(), 3);
    assert_eq!((gaps[1].start_ms, gaps[1].end_ms), (2_500, Some(3_600)));
    assert_eq!(gaps[1].kind, GapKind::Failover);
    assert_eq!((gaps[2].start_ms, gaps[2].end_ms), (3_600, None));
}

#[test]
fn bands_order_puts_the_worst_last() {
    assert!(Band::Down > Band::Leaving && Band::Leaving > Band::Changing);
    assert!(Band::Changing > Band::Primary && Band::Primary > Band::Replica);
    assert!(Band::Replica > Band::None);
}

#[test]
fn samples_until_finds_a_windows_first_sample_across_the_wrap() {
    let mut h = History::with_capacity(&names("n", 2), &names("l", 1), 5);
    assert_eq!(h.samples_until(0), 0);
    for s in 1..=8u64 {
        h.record(&reading(s * 1000, true, 0, 0));
    }
    // Kept: 4000..=8000.
    assert_eq!(
        h.times().collect::<Vec<_>>(),
        [4000, 5000, 6000, 7000, 8000]
    );
    assert_eq!(h.samples_until(3999), 0);
    assert_eq!(h.samples_until(4000), 1);
    assert_eq!(h.samples_until(6500), 3);
    assert_eq!(h.samples_until(8000), 5);
    assert_eq!(h.samples_until(u64::MAX), 5);
}

#[test]
fn a_nodes_band_is_its_tone_unless_it_is_leaving() {
    let shared = crate::state::Shared::detached(std::sync::Arc::new(
        crate::config::Config::from_toml(
            "[[server]]\nname = \"a\"\naddress = \"127.0.0.1:5432\"\n",
        )
        .unwrap(),
    ));
    let mut n = shared.current().nodes[0].clone();
    // No check yet: unknown, whatever the routing says.
    assert_eq!(Band::of(&n, false), Band::Unknown);
    n.leaving_since = Some(tokio::time::Instant::now());
    assert_eq!(Band::of(&n, false), Band::Leaving);
    assert_eq!(Band::Leaving.as_str(), "leaving");
}
