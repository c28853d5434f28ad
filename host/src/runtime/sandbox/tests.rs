use super::*;

#[test]
fn the_architecture_guide_states_the_hostcall_fuel_as_it_is() {
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/architecture.md"))
        .expect("docs/architecture.md");
    let mib = (HOSTCALL_FUEL as f64 / f64::from(1 << 20)).round();
    let stated = format!("(~{mib} MiB;");
    assert!(guide.contains(&stated), "docs/architecture.md should say {stated:?} of the hostcall fuel");
}

#[test]
fn laps_add_each_step_from_the_end_of_the_one_before_and_off_they_time_nothing() {
    let pause = Duration::from_millis(20);
    let mut laps = Laps::new();
    laps.start();
    std::thread::sleep(pause);
    laps.lap(Phase::Store);
    laps.lap(Phase::Call);
    laps.start();
    std::thread::sleep(pause);
    laps.lap(Phase::Store);
    assert!(laps.total(Phase::Store) >= pause * 2, "both steps summed");
    assert!(laps.total(Phase::Call) < pause, "timed from the end of the step before");
    assert_eq!(laps.total(Phase::Instantiate), Duration::ZERO);

    let mut off = Laps::off();
    off.start();
    std::thread::sleep(pause);
    off.lap(Phase::Store);
    assert_eq!(off.total(Phase::Store), Duration::ZERO);
}

/// A component of `instances` instances of one core module holding one memory.
fn component_with_memories(instances: u8) -> Vec<u8> {
    let module = [b"\0asm\x01\0\0\0".as_slice(), &[5, 3, 1, 0, 1]].concat();
    let mut component = b"\0asm\x0d\0\x01\0".to_vec();
    component.extend([1, module.len() as u8]);
    component.extend(&module);
    component.extend([2, 1 + 3 * instances, instances]);
    for _ in 0..instances {
        component.extend([0, 0, 0]);
    }
    component
}

#[tokio::test]
async fn a_component_that_would_take_more_than_its_share_of_the_pool_is_refused_when_it_loads() {
    let limits = Limits {
        timeout: Duration::from_secs(1),
        memory_bytes: 1 << 20,
        max_instances: 4,
        max_kv_calls: 4,
        max_outbound_response_bytes: 1 << 20,
    };
    let sandbox = Sandbox::new(limits, None).expect("sandbox");
    let kv = Namespace::new(Arc::new(kv::MemoryBackend::default()), "p");
    let load = |instances| sandbox.load("p", component_with_memories(instances), "0", Default::default(), kv.clone());
    let fits = load(2).await.expect_err("no exports");
    assert!(format!("{fits:#}").contains("exports"), "two memories compile; the exports are missing: {fits:#}");
    let greedy = load(3).await.expect_err("three memories");
    assert!(format!("{greedy:#}").contains("memories"), "{greedy:#}");
    let greedy = load(9).await.expect_err("nine core instances");
    assert!(format!("{greedy:#}").contains("instances"), "{greedy:#}");
}
