//! `…/list` operations: `page`, `size`, `sort_column`, `sort_desc` in, and a page out.

use serde::{Deserialize, Serialize};

use crate::error::{ApiError, Issue};
use crate::store::records::Sort;

/// The largest page a list returns.
pub const MAX_PAGE_SIZE: i64 = 100;

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub page: i64,
    pub size: i64,
    pub sort_column: Option<String>,
    pub sort_desc: Option<bool>,
}

/// A list request that passed the checks.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    pub page: i64,
    pub size: i64,
    pub sort: Sort,
}

impl PageRequest {
    pub fn offset(&self) -> i64 {
        (self.page - 1).saturating_mul(self.size)
    }

    /// One more row than the page holds, to learn whether there is a next page.
    pub fn limit(&self) -> i64 {
        self.size + 1
    }
}

impl ListQuery {
    /// `columns[0]` is the default sort column.
    pub fn check(&self, columns: &[&'static str]) -> Result<PageRequest, ApiError> {
        let mut issues = Vec::new();
        if self.page < 1 {
            issues.push(Issue::query("page", "greater_than_equal", "Input should be greater than or equal to 1"));
        }
        if self.size < 1 {
            issues.push(Issue::query("size", "greater_than_equal", "Input should be greater than or equal to 1"));
        } else if self.size > MAX_PAGE_SIZE {
            issues.push(Issue::query(
                "size",
                "less_than_equal",
                format!("Input should be less than or equal to {MAX_PAGE_SIZE}"),
            ));
        }
        let column = match self.sort_column.as_deref() {
            None => Some(columns[0]),
            Some(name) => columns.iter().copied().find(|c| *c == name),
        };
        if column.is_none() {
            let allowed: Vec<String> = columns.iter().map(|c| format!("'{c}'")).collect();
            issues.push(Issue::query("sort_column", "enum", format!("Input should be {}", allowed.join(", "))));
        }
        match column {
            Some(column) if issues.is_empty() => Ok(PageRequest {
                page: self.page,
                size: self.size,
                sort: Sort { column, desc: self.sort_desc.unwrap_or(false) },
            }),
            _ => Err(ApiError::Validation(issues)),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub page: i64,
    pub size: i64,
    pub has_more: bool,
    pub total: i64,
    pub total_is_estimated: bool,
}

impl<T> Page<T> {
    /// A page from up to `size + 1` fetched rows.
    pub fn new(req: &PageRequest, mut rows: Vec<T>, total: (i64, bool)) -> Self {
        let has_more = rows.len() as i64 > req.size;
        rows.truncate(req.size as usize);
        Page { items: rows, page: req.page, size: req.size, has_more, total: total.0, total_is_estimated: total.1 }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            page: self.page,
            size: self.size,
            has_more: self.has_more,
            total: self.total,
            total_is_estimated: self.total_is_estimated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(page: i64, size: i64, sort: Option<&str>) -> ListQuery {
        ListQuery { page, size, sort_column: sort.map(str::to_owned), sort_desc: None }
    }

    #[test]
    fn pages_sizes_and_sort_columns_are_checked() {
        let ok = q(2, 10, None).check(&["created_at", "id"]).unwrap();
        assert_eq!((ok.offset(), ok.limit(), ok.sort.column), (10, 11, "created_at"));
        let err = q(0, 101, Some("password")).check(&["created_at"]).unwrap_err();
        let ApiError::Validation(issues) = err else { panic!() };
        assert_eq!(issues.len(), 3);
        assert!(issues[2].msg.contains("'created_at'"));
        assert_eq!(q(i64::MAX, 100, None).check(&["id"]).unwrap().offset(), i64::MAX);
    }

    #[test]
    fn a_page_knows_whether_more_follow() {
        let req = q(1, 2, None).check(&["id"]).unwrap();
        let page = Page::new(&req, vec![1, 2, 3], (3, false));
        assert_eq!(page.items, [1, 2]);
        assert!(page.has_more);
        let page = Page::new(&req, vec![1], (1, false));
        assert!(!page.has_more);
    }
}
