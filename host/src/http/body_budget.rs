//! The request bodies held in memory at once, bounded: the body budget
//! every request's body is read within.

use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Bounds the request body bytes held in memory at once. Room is taken
/// only once a body's first bytes have arrived — a request without a body,
/// or whose client has sent none of it yet, holds nothing — and kept until
/// the request's plugin call ends:
///
/// - a body of declared length takes room for all of it at once, so
///   requests never each hold part of the budget while waiting for more;
/// - a chunked body takes room in steps as it arrives (doubling, at most
///   [`CHUNKED_STEP_MAX`] at a time); one chunked body at a time grows past
///   its first step, so growing bodies cannot starve each other either;
/// - once room is held the rest must keep coming at `min_rate` bytes a
///   second (after [`BODY_RATE_GRACE`]), or the request ends with 408 and
///   its room is free again.
#[derive(Debug)]
pub(crate) struct BodyBudget {
    /// One permit per KiB.
    kib: Arc<Semaphore>,
    /// Held by the one chunked body growing past its first step.
    growing: Arc<tokio::sync::Mutex<()>>,
    /// Slowest accepted body rate once room is held, bytes a second (0: none).
    min_rate: u64,
}

/// Most room a chunked body takes in one step.
const CHUNKED_STEP_MAX: usize = 8 << 20;
/// First step of a chunked body's room.
const CHUNKED_STEP_FIRST: usize = 64 << 10;
/// Time a body has before its minimum rate applies.
const BODY_RATE_GRACE: Duration = Duration::from_secs(1);

/// Why a body was not read.
#[derive(Debug)]
pub(crate) enum BodyError {
    TooLarge,
    Unreadable,
    /// It stopped arriving, or came slower than the minimum rate.
    TooSlow,
}

/// Room held for one request body (none for an empty body), given back when dropped.
#[derive(Debug)]
pub(crate) struct BodyRoom {
    _held: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl BodyBudget {
    /// A budget of `bytes`; bodies that hold room arrive at `min_rate` bytes a second at least.
    pub fn new(bytes: usize, min_rate: u64) -> Self {
        Self {
            kib: Arc::new(Semaphore::new(bytes.div_ceil(1024).min(Semaphore::MAX_PERMITS))),
            growing: Arc::new(tokio::sync::Mutex::new(())),
            min_rate,
        }
    }

    /// Room for `bytes` more, waiting for it.
    async fn take(&self, held: &mut Option<tokio::sync::OwnedSemaphorePermit>, bytes: usize) -> Result<(), BodyError> {
        let kib = u32::try_from(bytes.div_ceil(1024)).map_err(|_| BodyError::TooLarge)?;
        let more = self.kib.clone().acquire_many_owned(kib).await.map_err(|_| BodyError::Unreadable)?;
        match held {
            Some(held) => held.merge(more),
            None => *held = Some(more),
        }
        Ok(())
    }

    /// Reads `body` (at most `max` bytes) into one buffer, holding room for
    /// the buffer's capacity.
    pub(crate) async fn read(&self, mut body: Incoming, max: usize) -> Result<(Vec<u8>, BodyRoom), BodyError> {
        use hyper::body::Body as _;
        if body.is_end_stream() {
            return Ok((Vec::new(), BodyRoom { _held: None }));
        }
        let declared = body.size_hint().exact().and_then(|len| usize::try_from(len).ok());
        if declared.is_some_and(|len| len > max) {
            return Err(BodyError::TooLarge);
        }
        let limit = declared.unwrap_or(max);
        let mut held = None;
        let mut growing = None;
        let mut buffer = Vec::new();
        // Time spent waiting for the client since room was first held (not for room).
        let mut waited: Option<Duration> = None;
        loop {
            // Nothing is held until the first bytes are in; then the rest must keep coming.
            let frame = match waited.as_mut() {
                Some(waited) if self.min_rate > 0 => {
                    let allowed = BODY_RATE_GRACE + Duration::from_secs_f64(buffer.len() as f64 / self.min_rate as f64);
                    let started = Instant::now();
                    let frame = tokio::time::timeout(allowed.saturating_sub(*waited), body.frame()).await;
                    *waited += started.elapsed();
                    frame.map_err(|_| BodyError::TooSlow)?
                }
                _ => body.frame().await,
            };
            let Some(frame) = frame else { break };
            let Ok(data) = frame.map_err(|_| BodyError::Unreadable)?.into_data() else { continue };
            if data.is_empty() {
                continue;
            }
            let len = buffer.len() + data.len();
            if len > limit {
                return Err(BodyError::TooLarge);
            }
            if len > buffer.capacity() {
                let capacity = match declared {
                    Some(declared) => declared,
                    None if held.is_none() => len.max(CHUNKED_STEP_FIRST).min(limit),
                    None => {
                        if growing.is_none() {
                            growing = Some(self.growing.clone().lock_owned().await);
                        }
                        let step = buffer.capacity().clamp(CHUNKED_STEP_FIRST, CHUNKED_STEP_MAX);
                        len.max(buffer.capacity() + step).min(limit)
                    }
                };
                self.take(&mut held, capacity - buffer.capacity()).await?;
                buffer.reserve_exact(capacity - buffer.len());
                waited.get_or_insert(Duration::ZERO);
            }
            buffer.extend_from_slice(&data);
        }
        drop(growing);
        if let Some(permit) = held.as_mut() {
            let unused = permit.num_permits().saturating_sub(buffer.capacity().div_ceil(1024));
            if unused > 0 {
                drop(permit.split(unused));
            }
        }
        Ok((buffer, BodyRoom { _held: held }))
    }
}
