//! The confusion matrix of a labelled job, kept sparse: counts exist only where images fell,
//! so a job's tallies cost memory in proportion to the images it saw, not to the square of
//! the model's classes (a dense matrix for a 1,000,000-class model would be 8 TB).

use std::collections::BTreeMap;

/// Labelled images counted by (true class, predicted class), where non-zero.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Confusion {
    classes: usize,
    cells: BTreeMap<(u32, u32), u64>,
    /// Labelled images per true class, where non-zero.
    rows: BTreeMap<u32, u64>,
}

impl Confusion {
    /// An empty matrix over `classes` classes.
    pub fn new(classes: usize) -> Self {
        Self {
            classes,
            ..Self::default()
        }
    }

    /// The matrix of dense rows (`rows[true][predicted]`).
    pub fn from_rows(rows: &[Vec<u64>]) -> Self {
        let mut confusion = Self::new(rows.len());
        for (t, row) in rows.iter().enumerate() {
            for (p, &count) in row.iter().enumerate() {
                if count > 0 {
                    *confusion.cells.entry((t as u32, p as u32)).or_default() += count;
                    *confusion.rows.entry(t as u32).or_default() += count;
                }
            }
        }
        confusion
    }

    /// Counts one image of class `truth` predicted as `predicted`.
    pub fn add(&mut self, truth: u32, predicted: u32) {
        *self.cells.entry((truth, predicted)).or_default() += 1;
        *self.rows.entry(truth).or_default() += 1;
    }

    /// Classes of the model: the matrix is this many by this many.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Images of class `truth` predicted as `predicted`.
    pub fn get(&self, truth: u32, predicted: u32) -> u64 {
        self.cells.get(&(truth, predicted)).copied().unwrap_or(0)
    }

    /// Labelled images of class `truth`.
    pub fn row_total(&self, truth: u32) -> u64 {
        self.rows.get(&truth).copied().unwrap_or(0)
    }

    /// Labelled images in all.
    pub fn labelled(&self) -> u64 {
        self.rows.values().sum()
    }

    /// Labelled images predicted as their own class.
    pub fn correct(&self) -> u64 {
        self.cells
            .iter()
            .filter(|((t, p), _)| t == p)
            .map(|(_, &count)| count)
            .sum()
    }

    /// The non-zero cells, `((true, predicted), images)`, by true class then predicted.
    pub fn cells(&self) -> impl Iterator<Item = ((u32, u32), u64)> + '_ {
        self.cells.iter().map(|(&cell, &count)| (cell, count))
    }

    /// The true classes that have images, with how many, in class order.
    pub fn true_classes(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.rows.iter().map(|(&class, &count)| (class, count))
    }

    /// The classes some image has as its true or predicted class, in class order: the rows
    /// and columns of the matrix as written (a 1,000-class model's job over a few images is a
    /// few rows, not a million cells of zeros).
    pub fn seen(&self) -> Vec<u32> {
        let seen: std::collections::BTreeSet<u32> =
            self.cells.keys().flat_map(|&(t, p)| [t, p]).collect();
        seen.into_iter().collect()
    }

    /// The whole matrix, dense: only for drawing a few classes.
    pub fn dense(&self) -> Vec<Vec<u64>> {
        let mut rows = vec![vec![0; self.classes]; self.classes];
        for (&(t, p), &count) in &self.cells {
            rows[t as usize][p as usize] = count;
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_what_was_seen() {
        let mut confusion = Confusion::new(1_000_000);
        confusion.add(7, 7);
        confusion.add(7, 999_999);
        confusion.add(3, 3);
        assert_eq!((confusion.labelled(), confusion.correct()), (3, 2));
        assert_eq!(
            (confusion.get(7, 999_999), confusion.get(999_999, 7)),
            (1, 0)
        );
        assert_eq!(confusion.row_total(7), 2);
        assert_eq!(
            confusion.true_classes().collect::<Vec<_>>(),
            [(3, 1), (7, 2)]
        );
        assert_eq!(confusion.cells().count(), 3);
        let small = Confusion::from_rows(&[vec![2, 1], vec![0, 4]]);
        assert_eq!(small.dense(), [vec![2, 1], vec![0, 4]]);
        assert_eq!((small.labelled(), small.correct()), (7, 6));
    }
}
