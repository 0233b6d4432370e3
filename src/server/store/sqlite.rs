//! SQLite behind [`Db`]: the embedded default, one file in the data
//! directory (WAL), through rusqlite.

use rusqlite::types::{ToSqlOutput, ValueRef};

use super::sql::{Db, Dialect, Error, Result, Row, Value};

/// A rusqlite connection as a [`Db`].
pub struct Sqlite(pub rusqlite::Connection);

/// The prepared statements kept per connection (rusqlite's LRU).
const STATEMENT_CACHE: usize = 128;

impl Sqlite {
    /// Wraps a connection: its statement cache sized for the store's
    /// statements, and `GREATEST`/`LEAST` defined as PostgreSQL has them
    /// (the larger/smaller of their arguments, NULLs ignored), so the
    /// store's statements use one spelling for both databases.
    ///
    /// # Errors
    /// When SQLite fails.
    pub fn new(conn: rusqlite::Connection) -> Result<Self> {
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        for (name, keep) in [("GREATEST", std::cmp::Ordering::Greater), ("LEAST", std::cmp::Ordering::Less)] {
            conn.create_scalar_function(
                name,
                -1,
                rusqlite::functions::FunctionFlags::SQLITE_UTF8
                    | rusqlite::functions::FunctionFlags::SQLITE_DETERMINISTIC,
                move |ctx| {
                    let mut best: Option<rusqlite::types::Value> = None;
                    for i in 0..ctx.len() {
                        let v: rusqlite::types::Value = ctx.get(i)?;
                        if v == rusqlite::types::Value::Null {
                            continue;
                        }
                        best = Some(match best {
                            Some(b) if compare(&v, &b) != keep => b,
                            _ => v,
                        });
                    }
                    Ok(best.unwrap_or(rusqlite::types::Value::Null))
                },
            )
            .map_err(from)?;
        }
        Ok(Self(conn))
    }
}

/// SQLite's order between two non-NULL values: numbers, then text, then
/// blobs.
fn compare(a: &rusqlite::types::Value, b: &rusqlite::types::Value) -> std::cmp::Ordering {
    use rusqlite::types::Value as V;
    let rank = |v: &V| match v {
        V::Null => 0,
        V::Integer(_) | V::Real(_) => 1,
        V::Text(_) => 2,
        V::Blob(_) => 3,
    };
    #[allow(clippy::cast_precision_loss)]
    let num = |v: &V| match v {
        V::Integer(i) => *i as f64,
        V::Real(f) => *f,
        _ => 0.0,
    };
    match (a, b) {
        (V::Integer(x), V::Integer(y)) => x.cmp(y),
        (V::Text(x), V::Text(y)) => x.cmp(y),
        (V::Blob(x), V::Blob(y)) => x.cmp(y),
        _ if rank(a) == 1 && rank(b) == 1 => num(a).total_cmp(&num(b)),
        _ => rank(a).cmp(&rank(b)),
    }
}

pub(super) fn from(e: rusqlite::Error) -> Error {
    match e {
        rusqlite::Error::QueryReturnedNoRows => Error::NoRows,
        rusqlite::Error::SqliteFailure(f, msg) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
            Error::Constraint(msg.unwrap_or_else(|| f.to_string()))
        }
        e => Error::Backend(Box::new(e)),
    }
}

struct Bind<'a>(&'a Value);

impl rusqlite::ToSql for Bind<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self.0 {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

fn read(v: ValueRef<'_>) -> Result<Value> {
    Ok(match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8(t.to_vec()).map_err(|e| Error::Backend(Box::new(e)))?),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    })
}

impl Db for Sqlite {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute(&self, sql: &str, params: &[Value]) -> Result<usize> {
        let mut stmt = self.0.prepare_cached(sql).map_err(from)?;
        let binds: Vec<Bind<'_>> = params.iter().map(Bind).collect();
        stmt.execute(rusqlite::params_from_iter(binds.iter())).map_err(from)
    }

    fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let mut stmt = self.0.prepare_cached(sql).map_err(from)?;
        let n = stmt.column_count();
        let binds: Vec<Bind<'_>> = params.iter().map(Bind).collect();
        let mut rows = stmt.query(rusqlite::params_from_iter(binds.iter())).map_err(from)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(from)? {
            let mut values = Vec::with_capacity(n);
            for i in 0..n {
                values.push(read(r.get_ref(i).map_err(from)?)?);
            }
            out.push(Row::new(values));
        }
        Ok(out)
    }

    fn execute_batch(&self, sql: &str) -> Result<()> {
        self.0.execute_batch(sql).map_err(from)
    }

    fn begin(&self, read: bool) -> Result<()> {
        self.0.execute_batch(if read { "BEGIN DEFERRED" } else { "BEGIN IMMEDIATE" }).map_err(from)
    }

    fn path(&self) -> Option<std::path::PathBuf> {
        self.0.path().filter(|p| !p.is_empty()).map(std::path::PathBuf::from)
    }

    fn set_read_only(&self, read_only: bool) -> Result<()> {
        self.0.pragma_update(None, "query_only", if read_only { "ON" } else { "OFF" }).map_err(from)
    }
}
