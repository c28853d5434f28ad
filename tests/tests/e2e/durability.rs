//! What a `200 OK` promises when the gateway process dies: the data is on
//! disk. Documents stream in batches while the gateway is killed with
//! SIGKILL; after a restart every acknowledged batch is there whole, no
//! batch is there in part, and the change feed has no hole and no repeat.

use evogate_e2e::Gateway;
use evogate_e2e::stream::{Account, Sending, Stream, verify};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn every_acknowledged_batch_survives_sigkill_whole_and_the_feed_has_no_holes() {
    let mut gateway = Gateway::evotor("");
    let account = Account::register(&gateway, 77);
    // One attempt per batch: what the kill cut off stays unacknowledged.
    let stream =
        Stream::start(Arc::new(Mutex::new(gateway.base.clone())), &account, Sending { senders: 3, attempts: 1 });
    stream.wait_for(30);
    gateway.signal("KILL");
    let _ = gateway.wait_exit(Duration::from_secs(10));
    let ledger = stream.stop();
    assert!(ledger.acknowledged.len() >= 30, "the stream was flowing when the process died");
    gateway.restart();
    let kept = verify(&gateway, &account, &ledger);
    assert!(kept.batches >= ledger.acknowledged.len());
}
