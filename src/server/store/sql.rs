//! The store's one way to a database, whichever it is: SQLite (the
//! embedded default, `sqlite.rs`) or PostgreSQL (`postgres.rs`).
//!
//! The store's modules are written against [`Connection`], whose methods
//! have the names and shapes of rusqlite's (`execute`, `query_row`,
//! `prepare(..).query_map(..)`, `params![..]`, `.optional()`), over a
//! backend behind the object-safe [`Db`]. Values cross as [`Value`]: an
//! integer, a float, text, bytes or NULL, which is all the schema uses, so
//! one statement text serves both databases where their SQL agrees, and
//! [`Connection::dialect`] picks where it does not (see `postgres.rs` for
//! what is translated and what is written twice).
//!
//! Parameters are `?N` (or `?` in order) or `:name`; named ones become
//! positional here, before either backend sees them.

use std::borrow::Cow;

/// A value bound to or read from a statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// NULL.
    Null,
    /// An integer (PostgreSQL: bigint, integer, smallint, boolean, an
    /// integral numeric).
    Int(i64),
    /// A float.
    Real(f64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Self::Null => "NULL",
            Self::Int(_) => "integer",
            Self::Real(_) => "real",
            Self::Text(_) => "text",
            Self::Blob(_) => "blob",
        }
    }
}

/// Which database a connection is to, where their SQL differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite 3 (bundled).
    Sqlite,
    /// PostgreSQL 13 or later.
    Postgres,
}

/// Why a statement failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `query_row` found no row.
    #[error("no row")]
    NoRows,
    /// A uniqueness, foreign-key, check or not-null constraint refused the
    /// write; the database's message.
    #[error("constraint: {0}")]
    Constraint(String),
    /// Another transaction's write conflicts with this one (PostgreSQL's
    /// serialization failure or deadlock); it may be run again.
    #[error("conflict with a concurrent transaction: {0}")]
    Conflict(String),
    /// A column is not of the type asked for.
    #[error("column {index}: {found} is not {wanted}")]
    Type {
        /// Which column.
        index: usize,
        /// What was asked for.
        wanted: &'static str,
        /// What it holds.
        found: &'static str,
    },
    /// A statement names a column the row does not have.
    #[error("no column {0}")]
    NoColumn(usize),
    /// The statement's parameters do not match its text.
    #[error("parameters: {0}")]
    Params(String),
    /// The database failed: its own error.
    #[error("{0}")]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

/// A statement's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A value that binds as a parameter.
pub trait ToSql {
    /// This value as bound.
    fn to_value(&self) -> Value;
}

/// A value read out of a column.
pub trait FromSql: Sized {
    /// Reads it; `None` when the column's value is not of this type.
    fn from_value(v: &Value) -> Option<Self>;
    /// This type's name, for errors.
    const NAME: &'static str;
}

macro_rules! int_to_sql {
    ($($t:ty),*) => {$(
        impl ToSql for $t {
            fn to_value(&self) -> Value {
                Value::Int(i64::from(*self))
            }
        }
        impl FromSql for $t {
            fn from_value(v: &Value) -> Option<Self> {
                match v {
                    Value::Int(i) => <$t>::try_from(*i).ok(),
                    _ => None,
                }
            }
            const NAME: &'static str = stringify!($t);
        }
    )*};
}
int_to_sql!(i64, i32, u32, u16, u8);

impl ToSql for bool {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl FromSql for bool {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Int(i) => Some(*i != 0),
            _ => None,
        }
    }
    const NAME: &'static str = "bool";
}
impl ToSql for f64 {
    fn to_value(&self) -> Value {
        Value::Real(*self)
    }
}
impl FromSql for f64 {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Real(f) => Some(*f),
            #[allow(clippy::cast_precision_loss)]
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
    const NAME: &'static str = "f64";
}
impl ToSql for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_owned())
    }
}
impl ToSql for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl FromSql for String {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
    const NAME: &'static str = "text";
}
impl ToSql for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}
impl<const N: usize> ToSql for [u8; N] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}
impl ToSql for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}
impl FromSql for Vec<u8> {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Blob(b) => Some(b.clone()),
            _ => None,
        }
    }
    const NAME: &'static str = "blob";
}
impl<T: ToSql> ToSql for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToSql::to_value)
    }
}
impl<T: FromSql> FromSql for Option<T> {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Null => Some(None),
            v => T::from_value(v).map(Some),
        }
    }
    const NAME: &'static str = T::NAME;
}
impl<T: ToSql + ?Sized> ToSql for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}
impl<T: ToSql + ?Sized> ToSql for Box<T> {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}
impl ToSql for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}
impl FromSql for Value {
    fn from_value(v: &Value) -> Option<Self> {
        Some(v.clone())
    }
    const NAME: &'static str = "value";
}

/// One row of a result.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    values: Vec<Value>,
}

impl Row {
    /// A row of these values (backends).
    #[must_use]
    pub fn new(values: Vec<Value>) -> Self {
        Self { values }
    }

    /// Column `index` (from 0) as a `T`.
    ///
    /// # Errors
    /// [`Error::NoColumn`], or [`Error::Type`] when it holds another type.
    pub fn get<T: FromSql>(&self, index: usize) -> Result<T> {
        let v = self.values.get(index).ok_or(Error::NoColumn(index))?;
        T::from_value(v).ok_or(Error::Type { index, wanted: T::NAME, found: v.kind() })
    }
}

/// `Ok(None)` for [`Error::NoRows`], as rusqlite's.
pub trait OptionalExtension<T> {
    /// The row, or `None` when there was none.
    ///
    /// # Errors
    /// Any other error.
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(Error::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A statement's parameters: positional (`params![..]`, an array) or
/// named (`&[(":name", &value)]`).
pub trait Params {
    /// The statement text (named parameters made positional) and the
    /// values in order.
    ///
    /// # Errors
    /// [`Error::Params`] when a named parameter has no value.
    fn bind(self, sql: &str) -> Result<(Cow<'_, str>, Vec<Value>)>;
}

impl Params for &[&dyn ToSql] {
    fn bind(self, sql: &str) -> Result<(Cow<'_, str>, Vec<Value>)> {
        Ok((Cow::Borrowed(sql), self.iter().map(|v| v.to_value()).collect()))
    }
}

impl Params for [&dyn ToSql; 0] {
    fn bind(self, sql: &str) -> Result<(Cow<'_, str>, Vec<Value>)> {
        Ok((Cow::Borrowed(sql), Vec::new()))
    }
}

macro_rules! array_params {
    ($($n:literal),*) => {$(
        impl<T: ToSql> Params for [T; $n] {
            fn bind(self, sql: &str) -> Result<(Cow<'_, str>, Vec<Value>)> {
                Ok((Cow::Borrowed(sql), self.iter().map(ToSql::to_value).collect()))
            }
        }
        impl<T: ToSql> Params for &[T; $n] {
            fn bind(self, sql: &str) -> Result<(Cow<'_, str>, Vec<Value>)> {
                Ok((Cow::Borrowed(sql), self.iter().map(ToSql::to_value).collect()))
            }
        }
    )*};
}
array_params!(1, 2, 3, 4, 5, 6, 7, 8);

impl Params for &[(&str, &dyn ToSql)] {
    fn bind(self, sql: &str) -> Result<(Cow<'_, str>, Vec<Value>)> {
        let mut names: Vec<&str> = Vec::new();
        let mut out = String::with_capacity(sql.len());
        scan(sql, |piece| match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Named(name) => {
                let i = names.iter().position(|n| *n == name).unwrap_or_else(|| {
                    names.push(name);
                    names.len() - 1
                });
                out.push('?');
                out.push_str(&(i + 1).to_string());
            }
        });
        let values = names
            .iter()
            .map(|n| {
                self.iter()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| v.to_value())
                    .ok_or_else(|| Error::Params(format!("no value for {n}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((Cow::Owned(out), values))
    }
}

/// A piece of statement text, for [`scan`].
pub(crate) enum Piece<'a> {
    /// Text to keep (quoted strings and identifiers whole).
    Text(&'a str),
    /// A named parameter, with its colon (`:now`).
    Named(&'a str),
}

/// Walks a statement's text: named parameters apart, everything else
/// (string literals and quoted identifiers whole, so a `:` or `?` in them
/// is left alone) as text.
pub(crate) fn scan<'a>(sql: &'a str, mut f: impl FnMut(Piece<'a>)) {
    let bytes = sql.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            q @ (b'\'' | b'"') => {
                i += 1;
                while i < bytes.len() && bytes[i] != q {
                    i += 1;
                }
                i += 1;
            }
            b':' if i + 1 < bytes.len() && (bytes[i + 1].is_ascii_lowercase() || bytes[i + 1] == b'_') => {
                f(Piece::Text(&sql[start..i]));
                let mut end = i + 1;
                while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
                    end += 1;
                }
                f(Piece::Named(&sql[i..end]));
                start = end;
                i = end;
            }
            _ => i += 1,
        }
    }
    f(Piece::Text(&sql[start.min(sql.len())..]));
}

/// Positional parameters, as rusqlite's macro: `params![a, b]`.
#[macro_export]
macro_rules! sql_params {
    () => { &[] as &[&dyn $crate::server::store::sql::ToSql] };
    ($($v:expr),+ $(,)?) => { &[$(&$v as &dyn $crate::server::store::sql::ToSql),+] as &[&dyn $crate::server::store::sql::ToSql] };
}
pub use crate::sql_params as params;

/// What a write transaction may run beside, where the database lets
/// writers run side by side (PostgreSQL; SQLite has one writer at a time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Alone: every other writer waits for it, and it for them.
    Alone,
    /// One environment's poll: beside other environments' polls and
    /// [`Self::Beside`] writers, one at a time per environment; it writes
    /// only that environment's rows (or takes `Atomic::serialize` first).
    Environment(u64),
    /// Beside polls and other such writers, never beside an
    /// [`Self::Alone`] one: for writes that are atomic by themselves and
    /// touch no row a poll does (usage counters' upserts).
    Beside,
}

/// A database connection as a backend gives it (see the module doc).
pub trait Db: Send {
    /// Which database.
    fn dialect(&self) -> Dialect;
    /// Runs one statement; the rows it changed.
    ///
    /// # Errors
    /// The database's.
    fn execute(&self, sql: &str, params: &[Value]) -> Result<usize>;
    /// Runs one statement; its rows.
    ///
    /// # Errors
    /// The database's.
    fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>>;
    /// Runs statements without parameters, one after the other.
    ///
    /// # Errors
    /// The database's.
    fn execute_batch(&self, sql: &str) -> Result<()>;
    /// Opens a transaction (`read`: one that only reads).
    ///
    /// # Errors
    /// The database's.
    fn begin(&self, read: bool) -> Result<()>;
    /// Opens a write transaction of `scope`: on a database that serializes
    /// every writer anyway (SQLite), [`Self::begin`] whatever the scope.
    ///
    /// # Errors
    /// The database's.
    fn begin_write(&self, _scope: Scope) -> Result<()> {
        self.begin(false)
    }
    /// Makes the rest of this transaction wait for any other holding the
    /// same `key` (nothing where writers are one at a time anyway).
    ///
    /// # Errors
    /// The database's.
    fn lock(&self, _key: i32) -> Result<()> {
        Ok(())
    }
    /// The file it is on, for SQLite's reading connections.
    fn path(&self) -> Option<std::path::PathBuf> {
        None
    }
    /// Makes every later statement fail if it writes (`true`), or lifts
    /// that; SQLite's `query_only` (PostgreSQL: the session's default
    /// transaction mode).
    ///
    /// # Errors
    /// The database's.
    fn set_read_only(&self, read_only: bool) -> Result<()>;
}

/// A connection the store's modules write their statements on (see the
/// module doc).
pub struct Connection {
    db: Box<dyn Db>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Connection({:?})", self.db.dialect())
    }
}

impl Connection {
    /// Wraps a backend's connection.
    #[must_use]
    pub fn new(db: Box<dyn Db>) -> Self {
        Self { db }
    }

    /// The backend's connection.
    #[must_use]
    pub fn db(&self) -> &dyn Db {
        &*self.db
    }

    /// Which database.
    #[must_use]
    pub fn dialect(&self) -> Dialect {
        self.db.dialect()
    }

    /// Runs a statement; the rows it changed.
    ///
    /// # Errors
    /// The database's, or the parameters'.
    pub fn execute(&self, sql: &str, params: impl Params) -> Result<usize> {
        let (sql, values) = params.bind(sql)?;
        self.db.execute(&sql, &values)
    }

    /// Runs statements without parameters.
    ///
    /// # Errors
    /// The database's.
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        self.db.execute_batch(sql)
    }

    /// Runs an `INSERT` of one row into a table with an `id` key; the new
    /// row's id (SQLite and PostgreSQL both take `RETURNING`).
    ///
    /// # Errors
    /// [`Error::NoRows`] when it inserted nothing (an `INSERT … SELECT`
    /// that selected nothing), or the database's.
    pub fn insert(&self, sql: &str, params: impl Params) -> Result<i64> {
        self.query_row(&format!("{sql} RETURNING id"), params, |r| r.get(0))
    }

    /// The first row, through `f`.
    ///
    /// # Errors
    /// [`Error::NoRows`] when there is none, or `f`'s, the database's.
    pub fn query_row<T>(&self, sql: &str, params: impl Params, f: impl FnOnce(&Row) -> Result<T>) -> Result<T> {
        let (sql, values) = params.bind(sql)?;
        let rows = self.db.query(&sql, &values)?;
        f(rows.first().ok_or(Error::NoRows)?)
    }

    /// A statement to run, maybe several times. (Both backends cache
    /// prepared statements by their text; this only holds the text.)
    ///
    /// # Errors
    /// None today; kept for rusqlite's shape.
    pub fn prepare(&self, sql: &str) -> Result<Statement<'_>> {
        Ok(Statement { conn: self, sql: sql.to_owned() })
    }

    /// As [`Self::prepare`].
    ///
    /// # Errors
    /// None today.
    pub fn prepare_cached(&self, sql: &str) -> Result<Statement<'_>> {
        self.prepare(sql)
    }

    /// The file it is on (SQLite), for reading connections.
    #[must_use]
    pub fn path(&self) -> Option<std::path::PathBuf> {
        self.db.path()
    }
}

/// The rows of [`Statement::query_map`], each through its function.
pub struct MappedRows<F> {
    rows: std::vec::IntoIter<Row>,
    f: F,
}

impl<T, F: FnMut(&Row) -> Result<T>> Iterator for MappedRows<F> {
    type Item = Result<T>;
    fn next(&mut self) -> Option<Result<T>> {
        self.rows.next().map(|r| (self.f)(&r))
    }
}

/// A statement of [`Connection::prepare`].
pub struct Statement<'c> {
    conn: &'c Connection,
    sql: String,
}

impl Statement<'_> {
    /// Every row, each through `f`.
    ///
    /// # Errors
    /// The database's, or the parameters'.
    pub fn query_map<T, F: FnMut(&Row) -> Result<T>>(&mut self, params: impl Params, f: F) -> Result<MappedRows<F>> {
        let (sql, values) = params.bind(&self.sql)?;
        let rows = self.conn.db.query(&sql, &values)?;
        Ok(MappedRows { rows: rows.into_iter(), f })
    }

    /// Runs it; the rows it changed.
    ///
    /// # Errors
    /// The database's, or the parameters'.
    pub fn execute(&mut self, params: impl Params) -> Result<usize> {
        self.conn.execute(&self.sql, params)
    }

    /// The first row, through `f`.
    ///
    /// # Errors
    /// As [`Connection::query_row`].
    pub fn query_row<T>(&mut self, params: impl Params, f: impl FnOnce(&Row) -> Result<T>) -> Result<T> {
        self.conn.query_row(&self.sql, params, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_parameters_become_positional_and_quotes_are_left_alone() {
        let now = 5i64;
        let name = "x".to_owned();
        let named: &[(&str, &dyn ToSql)] = &[(":name", &name), (":now", &now)];
        let (sql, values) = named.bind("SELECT ':now', a FROM t WHERE b = :now AND c = :name OR d = :now").unwrap();
        assert_eq!(sql, "SELECT ':now', a FROM t WHERE b = ?1 AND c = ?2 OR d = ?1");
        assert_eq!(values, vec![Value::Int(5), Value::Text("x".into())]);
        let missing: &[(&str, &dyn ToSql)] = &[];
        assert!(matches!(missing.bind("SELECT :gone"), Err(Error::Params(_))));
    }

    #[test]
    fn rows_read_as_the_type_asked_for_or_say_why_not() {
        let row = Row::new(vec![Value::Int(3), Value::Null, Value::Text("a".into()), Value::Int(-1)]);
        assert_eq!(row.get::<i64>(0).unwrap(), 3);
        assert!(row.get::<bool>(0).unwrap());
        assert_eq!(row.get::<Option<i64>>(1).unwrap(), None);
        assert_eq!(row.get::<String>(2).unwrap(), "a");
        assert!(matches!(row.get::<i64>(2), Err(Error::Type { index: 2, .. })));
        assert!(matches!(row.get::<u32>(3), Err(Error::Type { index: 3, .. })), "a negative is no u32");
        assert!(matches!(row.get::<i64>(9), Err(Error::NoColumn(9))));
    }
}
