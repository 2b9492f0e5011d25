//! The release rule, as a pure function of what GitHub (and our own
//! observations) say about one PR. No I/O here: the watcher gathers the
//! facts, this decides.
//!
//! Outputs of commit C of PR P are released when, and only when:
//! - the builder is `trusted`;
//! - C is P's head now, and the label's latest event on P is a `labeled`
//!   event strictly later than the moment C last became P's head;
//! - that event's actor is allowed (config list, or write access).
//!
//! When C became the head: GitHub gives exact server times for force-pushes
//! (`head_ref_force_pushed`) and, through signed webhooks, for ordinary
//! pushes (`synchronize`, `opened`, `reopened`). Without those, the first
//! time the watcher saw C as the head (the API response's `Date`) is used: it
//! is never earlier than the real push, so it can only make the rule stricter.
//! Commit dates are never used: the pusher chooses them.

use serde::{Deserialize, Serialize};

use crate::config::Trust;

/// Seconds since the Unix epoch, in GitHub's clock.
pub type Time = i64;

/// How we learned that a commit was P's head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadSource {
    /// `head_ref_force_pushed` issue event: C became the head at `at`.
    ForcePush,
    /// Signed `pull_request` webhook (synchronize/opened/reopened): C became
    /// the head at the PR's `updated_at`.
    Webhook,
    /// The watcher saw C as the head at `at` (it became head at or before).
    Observed,
    /// Repository activity API: a push to the head branch made C its tip at `at`.
    Activity,
    /// The PR was reopened, or its head branch restored, at `at`: from then
    /// on the head is whatever the branch tip was (recorded with no sha).
    Reopened,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadRecord {
    pub sha: String,
    pub at: Time,
    pub source: HeadSource,
}

impl HeadRecord {
    /// "became the head at `at`" (as opposed to "was the head at `at`").
    fn is_push(&self) -> bool {
        self.source != HeadSource::Observed
    }
}

/// A `labeled`/`unlabeled` event for the release label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelEvent {
    pub added: bool,
    pub actor: String,
    pub at: Time,
}

/// Whether an account may release (config list or GitHub permission).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    Yes,
    No(String),
}

/// Everything the rule looks at for one commit of one PR.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub trust: Trust,
    pub commit: &'a str,
    pub label: &'a str,
    /// P's head now, per the API.
    pub current_head: &'a str,
    /// P's base branch now, per the API (`None`: the answer had none).
    pub current_base: Option<&'a str>,
    /// The branch the job merged C onto, from its quarantine manifest
    /// (`None`: not recorded).
    pub merged_base: Option<&'a str>,
    /// Labels on P now, per the API.
    pub current_labels: &'a [String],
    /// Label events for `label`, oldest first.
    pub label_events: &'a [LabelEvent],
    /// Head evidence, any order.
    pub heads: &'a [HeadRecord],
    /// Seconds C must have been the head before a label counts
    /// (`release.min_head_age_secs`): a push made just before the committer
    /// clicks is not what the committer reviewed.
    pub min_head_age: Time,
}

/// The answer on a community builder, whatever GitHub says.
pub const COMMUNITY: &str = "this builder's trust is `community`: it never releases";

/// Why a commit is released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub actor: String,
    pub labeled_at: Time,
    pub head_since: Time,
    pub head_source: HeadSource,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Release(Grant),
    Hold(String),
}

/// When C last became the head, from the evidence: the latest push record
/// for C after the last record of any other head; failing that, the first
/// observation of C after it.
pub fn head_since(commit: &str, heads: &[HeadRecord]) -> Option<(Time, HeadSource)> {
    let same = |r: &&HeadRecord| r.sha.eq_ignore_ascii_case(commit);
    let last_other = heads.iter().filter(|r| !same(r)).map(|r| r.at).max();
    let current: Vec<&HeadRecord> = heads
        .iter()
        .filter(same)
        .filter(|r| last_other.is_none_or(|o| r.at > o))
        .collect();
    if let Some(p) = current.iter().filter(|r| r.is_push()).max_by_key(|r| r.at) {
        return Some((p.at, p.source));
    }
    current
        .iter()
        .map(|r| r.at)
        .min()
        .map(|t| (t, HeadSource::Observed))
}

/// The candidate label event: the latest event for the label, if it is an
/// addition. `None` when the label is not (or no longer) on the PR.
pub fn latest_label(events: &[LabelEvent]) -> Option<&LabelEvent> {
    events.iter().max_by_key(|e| e.at).filter(|e| e.added)
}

pub fn decide(f: &Facts<'_>, allowed: impl Fn(&str) -> Allowed) -> Decision {
    let hold = Decision::Hold;
    if f.trust != Trust::Trusted {
        return hold(COMMUNITY.into());
    }
    if !f.current_head.eq_ignore_ascii_case(f.commit) {
        return hold(format!(
            "{} is no longer the PR's head (the head is now {}); a label on the new head does not cover it",
            f.commit, f.current_head
        ));
    }
    match (f.merged_base, f.current_base) {
        (None, _) => {
            return hold(
                "the quarantine manifest does not record the branch the head was merged onto, so it cannot be checked against the PR's base; build it again (or release it with `airlockctl release --reason`)".into(),
            )
        }
        (Some(_), None) => return hold("GitHub's answer names no base branch for the PR".into()),
        (Some(m), Some(c)) if m != c => {
            return hold(format!(
                "built merged onto `{m}`, but the PR's base branch is `{c}`: what the committer reviews is a merge onto `{c}`, so it must be built again"
            ))
        }
        _ => {}
    }
    let Some(ev) = latest_label(f.label_events) else {
        return match f.label_events.iter().max_by_key(|e| e.at) {
            Some(e) => hold(format!(
                "label `{}` was removed by {} at {}",
                f.label,
                e.actor,
                fmt_time(e.at)
            )),
            None => hold(format!("label `{}` has not been added to the PR", f.label)),
        };
    };
    if !f.current_labels.iter().any(|l| l == f.label) {
        return hold(format!("label `{}` is not on the PR now", f.label));
    }
    let Some((since, source)) = head_since(f.commit, f.heads) else {
        return hold(format!(
            "not yet known when {} became the PR's head",
            f.commit
        ));
    };
    if ev.at <= since {
        return hold(format!(
            "label `{}` was added by {} at {}, not after {} became the head at {} ({}); it must be added again",
            f.label,
            ev.actor,
            fmt_time(ev.at),
            f.commit,
            fmt_time(since),
            source_text(source)
        ));
    }
    if ev.at - since < f.min_head_age {
        return hold(format!(
            "label `{}` was added by {} at {}, only {} s after {} became the head at {} ({}); a label counts only once the head is {} s old (release.min_head_age_secs), so it must be added again",
            f.label,
            ev.actor,
            fmt_time(ev.at),
            ev.at - since,
            f.commit,
            fmt_time(since),
            source_text(source),
            f.min_head_age
        ));
    }
    if let Allowed::No(why) = allowed(&ev.actor) {
        return hold(format!(
            "label `{}` was added by {}, who may not release: {why}",
            f.label, ev.actor
        ));
    }
    Decision::Release(Grant {
        actor: ev.actor.clone(),
        labeled_at: ev.at,
        head_since: since,
        head_source: source,
    })
}

pub fn source_text(s: HeadSource) -> &'static str {
    match s {
        HeadSource::ForcePush => "force-push event",
        HeadSource::Webhook => "push webhook",
        HeadSource::Observed => "first seen by airlock",
        HeadSource::Activity => "push activity",
        HeadSource::Reopened => "PR reopened",
    }
}

pub fn fmt_time(t: Time) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| t.to_string())
}

/// GitHub's ISO 8601 timestamps (`2026-11-25T06:00:00Z`).
pub fn parse_time(s: &str) -> Option<Time> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "cccccccccccccccccccccccccccccccccccccccc";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const L: &str = "nonmalicious-checked";

    fn head(sha: &str, at: Time, source: HeadSource) -> HeadRecord {
        HeadRecord {
            sha: sha.into(),
            at,
            source,
        }
    }
    fn label(added: bool, actor: &str, at: Time) -> LabelEvent {
        LabelEvent {
            added,
            actor: actor.into(),
            at,
        }
    }
    fn run(head_now: &str, events: &[LabelEvent], heads: &[HeadRecord], trust: Trust) -> Decision {
        let labels = if latest_label(events).is_some() {
            vec![L.to_string()]
        } else {
            vec![]
        };
        decide(
            &Facts {
                trust,
                commit: C,
                label: L,
                current_head: head_now,
                current_base: Some("master"),
                merged_base: Some("master"),
                current_labels: &labels,
                label_events: events,
                heads,
                min_head_age: 0,
            },
            |a| {
                if a == "mallory" {
                    Allowed::No("permission read".into())
                } else {
                    Allowed::Yes
                }
            },
        )
    }
    fn hold_text(d: Decision) -> String {
        match d {
            Decision::Hold(s) => s,
            d => panic!("expected hold, got {d:?}"),
        }
    }

    #[test]
    fn label_after_push_releases() {
        let d = run(
            C,
            &[label(true, "alice", 200)],
            &[head(C, 100, HeadSource::Webhook)],
            Trust::Trusted,
        );
        assert_eq!(
            d,
            Decision::Release(Grant {
                actor: "alice".into(),
                labeled_at: 200,
                head_since: 100,
                head_source: HeadSource::Webhook
            })
        );
    }

    #[test]
    fn base_branch_must_match_the_prs() {
        let labels = [L.to_string()];
        let events = [label(true, "alice", 200)];
        let heads = [head(C, 100, HeadSource::Webhook)];
        let f = |merged: Option<&'static str>, current: Option<&'static str>| Facts {
            trust: Trust::Trusted,
            commit: C,
            label: L,
            current_head: C,
            current_base: current,
            merged_base: merged,
            current_labels: &labels,
            label_events: &events,
            heads: &heads,
            min_head_age: 0,
        };
        // Built onto a branch the PR does not target (a forged
        // target_branch, or the PR was retargeted): held.
        let t = hold_text(decide(&f(Some("evil"), Some("master")), |_| Allowed::Yes));
        assert!(t.contains("`evil`") && t.contains("`master`"), "{t}");
        // Not recorded (an old manifest), or GitHub names none: held.
        assert!(
            hold_text(decide(&f(None, Some("master")), |_| Allowed::Yes))
                .contains("does not record")
        );
        assert!(matches!(
            decide(&f(Some("master"), None), |_| Allowed::Yes),
            Decision::Hold(_)
        ));
        assert!(matches!(
            decide(&f(Some("master"), Some("master")), |_| Allowed::Yes),
            Decision::Release(_)
        ));
    }

    #[test]
    fn label_right_after_a_push_does_not_count() {
        // The author pushed C 30 s before the committer clicked: the
        // committer likely reviewed the previous head.
        let labels = [L.to_string()];
        let events = [label(true, "alice", 130)];
        let heads = [head(C, 100, HeadSource::Webhook)];
        let f = |age| Facts {
            trust: Trust::Trusted,
            commit: C,
            label: L,
            current_head: C,
            current_base: Some("master"),
            merged_base: Some("master"),
            current_labels: &labels,
            label_events: &events,
            heads: &heads,
            min_head_age: age,
        };
        let t = hold_text(decide(&f(300), |_| Allowed::Yes));
        assert!(
            t.contains("only 30 s after") && t.contains("min_head_age_secs"),
            "{t}"
        );
        assert!(matches!(
            decide(&f(30), |_| Allowed::Yes),
            Decision::Release(_)
        ));
        assert!(matches!(
            decide(&f(31), |_| Allowed::Yes),
            Decision::Hold(_)
        ));
    }

    #[test]
    fn community_never_releases() {
        let d = run(
            C,
            &[label(true, "alice", 200)],
            &[head(C, 100, HeadSource::Webhook)],
            Trust::Community,
        );
        assert!(hold_text(d).contains("community"));
    }

    #[test]
    fn label_before_push_does_not_count() {
        // Labelled while B was head, then C pushed (webhook or force-push).
        for src in [HeadSource::Webhook, HeadSource::ForcePush] {
            let d = run(
                C,
                &[label(true, "alice", 150)],
                &[head(B, 100, HeadSource::Observed), head(C, 160, src)],
                Trust::Trusted,
            );
            assert!(hold_text(d).contains("must be added again"));
        }
        // Same second as the push: ambiguous, so not covered.
        let d = run(
            C,
            &[label(true, "alice", 160)],
            &[head(C, 160, HeadSource::ForcePush)],
            Trust::Trusted,
        );
        assert!(matches!(d, Decision::Hold(_)));
    }

    #[test]
    fn force_push_to_new_head_needs_new_label() {
        // Label on B, then force-push to C: B's label does not cover C.
        let d = run(
            C,
            &[label(true, "alice", 150)],
            &[
                head(B, 100, HeadSource::Observed),
                head(C, 170, HeadSource::ForcePush),
            ],
            Trust::Trusted,
        );
        assert!(matches!(d, Decision::Hold(_)));
        // And B, no longer the head, is not released either.
        let d2 = decide(
            &Facts {
                trust: Trust::Trusted,
                commit: B,
                label: L,
                current_head: C,
                current_base: Some("master"),
                merged_base: Some("master"),
                current_labels: &[L.to_string()],
                label_events: &[label(true, "alice", 150)],
                heads: &[head(B, 100, HeadSource::Observed)],
                min_head_age: 0,
            },
            |_| Allowed::Yes,
        );
        assert!(hold_text(d2).contains("no longer the PR's head"));
    }

    #[test]
    fn removed_label_stops_release() {
        let d = run(
            C,
            &[label(true, "alice", 200), label(false, "bob", 210)],
            &[head(C, 100, HeadSource::Webhook)],
            Trust::Trusted,
        );
        assert!(hold_text(d).contains("removed by bob"));
        // Re-added later: the re-adding counts.
        let d = run(
            C,
            &[
                label(true, "alice", 200),
                label(false, "bob", 210),
                label(true, "carol", 220),
            ],
            &[head(C, 100, HeadSource::Webhook)],
            Trust::Trusted,
        );
        assert!(matches!(d, Decision::Release(g) if g.actor == "carol"));
    }

    #[test]
    fn actor_must_be_allowed() {
        let d = run(
            C,
            &[label(true, "mallory", 200)],
            &[head(C, 100, HeadSource::Webhook)],
            Trust::Trusted,
        );
        assert!(hold_text(d).contains("mallory, who may not release"));
    }

    #[test]
    fn label_must_still_be_on_the_pr() {
        // The events say "labelled", the PR's labels say otherwise (an
        // unlabel event not yet visible): not released.
        let d = decide(
            &Facts {
                trust: Trust::Trusted,
                commit: C,
                label: L,
                current_head: C,
                current_base: Some("master"),
                merged_base: Some("master"),
                current_labels: &["other".to_string()],
                label_events: &[label(true, "alice", 200)],
                heads: &[head(C, 100, HeadSource::Webhook)],
                min_head_age: 0,
            },
            |_| Allowed::Yes,
        );
        assert!(hold_text(d).contains("not on the PR now"));
    }

    #[test]
    fn unknown_head_time_holds() {
        let d = run(C, &[label(true, "alice", 200)], &[], Trust::Trusted);
        assert!(hold_text(d).contains("not yet known"));
    }

    #[test]
    fn head_since_uses_the_current_headship() {
        // C pushed (webhook) at 10, force-push to B at 20, C again by an
        // ordinary push nobody told us about, observed at 40.
        let h = [
            head(C, 10, HeadSource::Webhook),
            head(B, 20, HeadSource::ForcePush),
            head(C, 40, HeadSource::Observed),
            head(C, 50, HeadSource::Observed),
        ];
        assert_eq!(head_since(C, &h), Some((40, HeadSource::Observed)));
        // A force-push back to C at 30 is exact and wins over observations.
        let mut h2 = h.to_vec();
        h2.push(head(C, 30, HeadSource::ForcePush));
        assert_eq!(head_since(C, &h2), Some((30, HeadSource::ForcePush)));
        // Observation only: the first one.
        assert_eq!(
            head_since(
                C,
                &[
                    head(C, 7, HeadSource::Observed),
                    head(C, 5, HeadSource::Observed)
                ]
            ),
            Some((5, HeadSource::Observed))
        );
        assert_eq!(head_since(C, &[head(B, 5, HeadSource::Observed)]), None);
        // A force-push to an unknown commit (no commit_id) still ends C's
        // earlier headship: only what comes after it counts.
        let h3 = [
            head(C, 10, HeadSource::Webhook),
            head("", 20, HeadSource::ForcePush),
        ];
        assert_eq!(head_since(C, &h3), None);
        // Pushes while the PR was closed (activity says D became the branch
        // tip at 15) do not date D's headship: the reopening at 30 ends it,
        // and only what comes after counts.
        let d = "dddddddddddddddddddddddddddddddddddddddd";
        let h5 = [
            head(C, 10, HeadSource::Observed),
            head(d, 15, HeadSource::Activity),
            head("", 30, HeadSource::Reopened),
            head(d, 40, HeadSource::Observed),
        ];
        assert_eq!(head_since(d, &h5), Some((40, HeadSource::Observed)));
        // Same second as another head's record: not datable (yet).
        let h4 = [
            head(B, 20, HeadSource::Observed),
            head(C, 20, HeadSource::Webhook),
        ];
        assert_eq!(head_since(C, &h4), None);
    }

    #[test]
    fn times_parse() {
        assert_eq!(parse_time("1970-01-01T00:01:00Z"), Some(60));
        assert_eq!(fmt_time(60), "1970-01-01T00:01:00Z");
        assert_eq!(parse_time("yesterday"), None);
    }
}
