//! Error helpers shared by every layer (a leaf: it uses nothing of airlock).

/// An error and its sources, `outer: inner: innermost`, for one log field
/// or one line of a job's result.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
