//! Note-level scoring in the manner of mir_eval's `transcription` metrics: a reference and an
//! estimated note can match when their onsets are within a tolerance and their pitches within
//! another (and, optionally, their offsets agree); each note matches at most one other, and the
//! matching with the most pairs is taken (maximum bipartite matching). Precision is matches over
//! estimated notes, recall matches over reference notes.

use super::note::Note;
use serde::Serialize;

/// When two notes match.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Tolerance {
    /// Largest onset difference, seconds (mir_eval's default and ours: 0.05).
    pub onset_s: f64,
    /// Largest pitch difference, semitones (1: a neighbouring semitone still counts).
    pub pitch_semitones: f64,
    /// Also require the offsets to agree: within `max(offset_ratio × reference duration,
    /// offset_min_s)` (mir_eval: 0.2 and 0.05). `None` judges onsets and pitches only.
    pub offset: Option<OffsetRule>,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct OffsetRule {
    pub ratio: f64,
    pub min_s: f64,
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance { onset_s: 0.05, pitch_semitones: 1.0, offset: None }
    }
}

impl Tolerance {
    /// The same tolerance that also judges offsets the mir_eval way.
    pub fn with_offsets(self) -> Tolerance {
        Tolerance { offset: Some(OffsetRule { ratio: 0.2, min_s: 0.05 }), ..self }
    }
}

/// Counts and rates of one comparison (or of several added up).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct NoteScore {
    pub reference: usize,
    pub estimated: usize,
    pub matched: usize,
    /// Sum over matched pairs of (estimated − reference) onset, seconds (for the mean bias).
    pub onset_error_sum_s: f64,
}

impl NoteScore {
    pub fn precision(&self) -> f64 {
        ratio(self.matched, self.estimated)
    }
    pub fn recall(&self) -> f64 {
        ratio(self.matched, self.reference)
    }
    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r > 0.0 {
            2.0 * p * r / (p + r)
        } else {
            0.0
        }
    }
    /// Mean signed onset error of matched notes, seconds (positive: estimated late).
    pub fn mean_onset_error_s(&self) -> f64 {
        if self.matched == 0 {
            0.0
        } else {
            self.onset_error_sum_s / self.matched as f64
        }
    }
    /// Pools the counts of two comparisons (for a score over many songs).
    pub fn add(&mut self, other: &NoteScore) {
        self.reference += other.reference;
        self.estimated += other.estimated;
        self.matched += other.matched;
        self.onset_error_sum_s += other.onset_error_sum_s;
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Scores `estimate` against `reference`.
pub fn score(reference: &[Note], estimate: &[Note], tol: &Tolerance) -> NoteScore {
    let mut est: Vec<&Note> = estimate.iter().collect();
    est.sort_by(|a, b| a.onset_s.total_cmp(&b.onset_s));
    // Differences are rounded to 0.1 ms (mir_eval rounds to 4 decimals) so a note exactly at the
    // tolerance is not lost to floating-point error.
    let within = |d: f64, tol: f64| (d.abs() * 1e4).round() <= (tol * 1e4).round();
    let candidates: Vec<Vec<usize>> = reference
        .iter()
        .map(|r| {
            let from = est.partition_point(|e| e.onset_s < r.onset_s - tol.onset_s - 1e-3);
            (from..est.len())
                .take_while(|&j| est[j].onset_s <= r.onset_s + tol.onset_s + 1e-3)
                .filter(|&j| {
                    let e = est[j];
                    within(e.onset_s - r.onset_s, tol.onset_s)
                        && (e.key as f64 - r.key as f64).abs() <= tol.pitch_semitones + 1e-9
                        && tol.offset.is_none_or(|o| {
                            within(e.offset_s - r.offset_s, (o.ratio * (r.offset_s - r.onset_s)).max(o.min_s))
                        })
                })
                .collect()
        })
        .collect();
    let matching = max_matching(&candidates, est.len());
    let mut s = NoteScore { reference: reference.len(), estimated: estimate.len(), ..Default::default() };
    for (i, m) in matching.iter().enumerate() {
        if let Some(j) = *m {
            s.matched += 1;
            s.onset_error_sum_s += est[j].onset_s - reference[i].onset_s;
        }
    }
    s
}

/// Maximum bipartite matching by augmenting paths (Kuhn's algorithm): `edges[i]` lists the right
/// vertices left vertex `i` may take; returns each left vertex's partner. Each note has only a
/// few candidates (those within the onset tolerance), so this is fast.
fn max_matching(edges: &[Vec<usize>], n_right: usize) -> Vec<Option<usize>> {
    let mut right_of: Vec<Option<usize>> = vec![None; n_right];
    let mut visited = vec![usize::MAX; n_right];
    for i in 0..edges.len() {
        augment(i, i, edges, &mut right_of, &mut visited);
    }
    let mut left_of = vec![None; edges.len()];
    for (j, l) in right_of.iter().enumerate() {
        if let Some(i) = *l {
            left_of[i] = Some(j);
        }
    }
    left_of
}

/// Looks for an augmenting path from left vertex `i` and flips it if found; `round` marks the
/// right vertices visited by this search. Depth-first with an explicit stack rather than
/// recursion, so a long chain of overlapping candidates cannot overflow the call stack.
fn augment(i: usize, round: usize, edges: &[Vec<usize>], right_of: &mut [Option<usize>], visited: &mut [usize]) -> bool {
    // Frames of (left vertex, next edge to try); path[d] is the right vertex taken from frame d.
    let mut stack: Vec<(usize, usize)> = vec![(i, 0)];
    let mut path: Vec<usize> = Vec::new(); // right vertices taken along the current path
    while let Some(&mut (l, ref mut k)) = stack.last_mut() {
        if *k >= edges[l].len() {
            stack.pop();
            path.pop();
            continue;
        }
        let j = edges[l][*k];
        *k += 1;
        if visited[j] == round {
            continue;
        }
        visited[j] = round;
        path.push(j);
        match right_of[j] {
            None => {
                // Flip the path: each left vertex on the stack takes the right vertex after it.
                for (depth, &(left, _)) in stack.iter().enumerate() {
                    right_of[path[depth]] = Some(left);
                }
                return true;
            }
            Some(next) => stack.push((next, 0)),
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(on: f64, key: u8) -> Note {
        Note { onset_s: on, offset_s: on + 0.2, key, velocity: 90 }
    }

    #[test]
    fn onset_and_pitch_tolerances_decide_matches() {
        let reference = [n(0.0, 40), n(0.5, 40), n(1.0, 43), n(1.5, 45)];
        let estimate = [
            n(0.05, 41),  // 50 ms late, one semitone up: matches
            n(0.56, 40),  // 60 ms late: no
            n(1.0, 45),   // two semitones: no
            n(1.49, 45),  // matches
            n(3.0, 30),   // extra
        ];
        let s = score(&reference, &estimate, &Tolerance::default());
        assert_eq!((s.reference, s.estimated, s.matched), (4, 5, 2));
        assert!((s.precision() - 0.4).abs() < 1e-12 && (s.recall() - 0.5).abs() < 1e-12);
        assert!((s.f1() - 2.0 * 0.4 * 0.5 / 0.9).abs() < 1e-12);
        assert!((s.mean_onset_error_s() - 0.02).abs() < 1e-12);
    }

    #[test]
    fn matching_is_one_to_one_and_maximal() {
        // Greedy would give estimate 0.03 to reference 0.0 and leave reference 0.06 without one;
        // the maximum matching pairs (0.0, -0.04) and (0.06, 0.03).
        let reference = [n(0.0, 40), n(0.06, 40)];
        let estimate = [n(0.03, 40), n(-0.04, 40)];
        assert_eq!(score(&reference, &estimate, &Tolerance::default()).matched, 2);
        // two estimates for one reference: one match
        let s = score(&[n(0.0, 40)], &[n(0.0, 40), n(0.01, 40)], &Tolerance::default());
        assert_eq!((s.matched, s.estimated), (1, 2));
        // nothing at all
        let s = score(&[], &[], &Tolerance::default());
        assert_eq!((s.precision(), s.recall(), s.f1()), (0.0, 0.0, 0.0));
    }

    #[test]
    fn offsets_count_only_when_asked() {
        let r = Note { onset_s: 0.0, offset_s: 1.0, key: 40, velocity: 90 };
        let e = Note { offset_s: 0.7, ..r };
        assert_eq!(score(&[r], &[e], &Tolerance::default()).matched, 1);
        assert_eq!(score(&[r], &[e], &Tolerance::default().with_offsets()).matched, 0);
        let e = Note { offset_s: 0.8, ..r }; // exactly 0.2 of the duration
        assert_eq!(score(&[r], &[e], &Tolerance::default().with_offsets()).matched, 1);
    }

    #[test]
    fn pooled_scores_add_counts() {
        let mut total = NoteScore::default();
        total.add(&NoteScore { reference: 10, estimated: 8, matched: 8, onset_error_sum_s: 0.08 });
        total.add(&NoteScore { reference: 10, estimated: 12, matched: 6, onset_error_sum_s: -0.02 });
        assert_eq!((total.reference, total.estimated, total.matched), (20, 20, 14));
        assert!((total.f1() - 0.7).abs() < 1e-12);
        assert!((total.mean_onset_error_s() - 0.06 / 14.0).abs() < 1e-12);
    }
}
