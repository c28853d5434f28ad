use super::txn::NoHook;
use super::*;
use crate::kv::{Kv as _, MemKv, Write};

#[test]
fn transact_applies_writes_only_when_reads_still_hold() {
    let world = crate::testing::Fixture::new();
    let kv = &world.kv;
    let mut runs = 0;
    let result: Result<(), StorageError> = transact(&world.ctx(), &NoHook, |txn| {
        runs += 1;
        let current: Option<u32> = txn.get("counter")?;
        if runs == 1 {
            // Someone else writes between our read and our commit.
            kv.commit(Vec::new(), vec![Write::Set("counter".into(), b"10".to_vec())]).expect("side write");
        }
        txn.put("counter", &(current.unwrap_or(0) + 1));
        Ok(())
    });
    assert!(result.is_ok());
    assert_eq!(runs, 2, "the conflict made it run again");
    assert_eq!(read::<u32>(kv, "counter").expect("read"), Some(11), "no lost update");
}

#[test]
fn an_error_in_the_body_writes_nothing() {
    let world = crate::testing::Fixture::new();
    let kv = &world.kv;
    let result: Result<(), crate::errors::ApiError> = transact(&world.ctx(), &NoHook, |txn| {
        txn.put("a", &1);
        Err(crate::errors::ApiError::not_found())
    });
    assert!(result.is_err());
    assert!(kv.keys().is_empty());
}

#[test]
fn logins_are_indexed_case_insensitively_and_hashed() {
    assert_eq!(login_key("Ivan"), login_key("iVAN"));
    assert!(!login_key("ivan").contains("ivan"));
    assert_eq!(login_key(&"ж".repeat(256)).len(), "logins/".len() + 64);
}

#[test]
fn pages_carry_a_cursor_until_the_end() {
    let kv = MemKv::default();
    for i in 0..5 {
        kv.commit(Vec::new(), vec![Write::Set(format!("accounts/{i}"), encode(&i))]).expect("put");
    }
    let (first, next) = page::<u32>(&kv, ACCOUNTS_PREFIX, None, 2).expect("page");
    assert_eq!((first, next.as_deref()), (vec![0, 1], Some("1")));
    let (second, next) = page::<u32>(&kv, ACCOUNTS_PREFIX, Some("1"), 2).expect("page");
    assert_eq!((second, next.as_deref()), (vec![2, 3], Some("3")));
    let (last, next) = page::<u32>(&kv, ACCOUNTS_PREFIX, Some("3"), 2).expect("page");
    assert_eq!((last, next), (vec![4], None));
}
