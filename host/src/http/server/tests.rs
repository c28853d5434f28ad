use super::*;

#[test]
fn a_declared_length_over_the_limit_is_refused_before_the_body() {
    let with = |length: &str| {
        let mut headers = hyper::HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from_str(length).expect("header"));
        headers
    };
    assert_eq!(declared_length_within(&with("100"), 100), Ok(()));
    assert_eq!(declared_length_within(&with("101"), 100), Err(()));
    assert_eq!(declared_length_within(&hyper::HeaderMap::new(), 100), Ok(()), "chunked: read and counted");
    assert_eq!(declared_length_within(&with("not a number"), 100), Ok(()), "hyper refuses it first");
}

#[test]
fn each_plugin_outcome_is_answered_as_the_client_should_see_it() {
    let answered = PluginResponse { status: 201, headers: Vec::new(), body: b"ok".to_vec() };
    let status = |outcome| match answer_of(outcome, "p", "p@1", ErrorFormat::Problem) {
        Ok(response) => response.status,
        Err(response) => response.status().as_u16(),
    };
    assert_eq!(status(Ok(Ok(answered))), 201);
    assert_eq!(status(Ok(Err(Failure::Deadline))), 503, "the deadline: Evotor retries");
    assert_eq!(status(Err(())), 503, "a host call hung past the deadline");
    assert_eq!(status(Ok(Err(Failure::MemoryLimit))), 500);
    assert_eq!(status(Ok(Err(Failure::Trap(wasmtime::format_err!("unreachable"))))), 500);
    let retry = answer_of(Ok(Err(Failure::Deadline)), "p", "p@1", ErrorFormat::Evotor).expect_err("an error");
    assert_eq!(retry.headers().get(RETRY_AFTER).map(HeaderValue::as_bytes), Some(&b"1"[..]));
}
