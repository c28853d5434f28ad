//! `TEST_GUEST_WORLD=0.2.0`, `0.2.1`, `0.2.2` or `0.2.3` builds the test plugin against
//! that version of `evogate:plugin` instead of 0.1.0.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(world_0_2_0, world_0_2_1, world_0_2_2, world_0_2_3)");
    println!("cargo::rerun-if-env-changed=TEST_GUEST_WORLD");
    match std::env::var("TEST_GUEST_WORLD").as_deref() {
        Ok("0.2.0") => println!("cargo::rustc-cfg=world_0_2_0"),
        Ok("0.2.1") => println!("cargo::rustc-cfg=world_0_2_1"),
        Ok("0.2.2") => println!("cargo::rustc-cfg=world_0_2_2"),
        Ok("0.2.3") => println!("cargo::rustc-cfg=world_0_2_3"),
        Ok("0.1.0") | Err(_) => {}
        Ok(other) => {
            panic!(
                "TEST_GUEST_WORLD={other:?}: the test plugin is built against 0.1.0 (default), 0.2.0, 0.2.1, 0.2.2 or 0.2.3"
            )
        }
    }
}
