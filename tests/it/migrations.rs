//! The two migration sets (`migrations/sqlite`, `migrations/postgres`) make the same schema: the
//! server's own migrations are run on a fresh database of each backend, and the databases are
//! asked what they hold — the same tables, each with the same columns, each column NOT NULL on
//! both or on neither. (Types differ by design: a UUID is a BLOB on SQLite, a `uuid` on Postgres.)

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use vocode_server::config::GlobalArgs;

use crate::support::{Backend, TestDb};

/// Every column of every table of ours (sqlx's `_sqlx_migrations` left out): whether it is NOT NULL.
type Columns = BTreeMap<(String, String), bool>;

/// The columns of a fresh database of `backend` after the server's migrations, or `None` when
/// Postgres is not reachable and not required.
async fn migrated(backend: Backend) -> Option<Columns> {
    let db = TestDb::create(backend).await?;
    let global = GlobalArgs { database_url: db.url.clone(), secrets_key: None };
    let store = vocode_server::open_store(&global, true).await.expect("the migrations run");
    let columns = match db.backend {
        Backend::Sqlite => sqlite_columns(&db.url).await,
        Backend::Postgres => postgres_columns(&db.url).await,
    };
    drop(store);
    Some(columns)
}

/// What SQLite enforces: `notnull` is the column's own NOT NULL. (A PRIMARY KEY alone does not
/// make a column NOT NULL on SQLite, except an INTEGER PRIMARY KEY or in a WITHOUT ROWID table;
/// those cases are counted as NOT NULL, as they are.)
async fn sqlite_columns(url: &str) -> Columns {
    let pool = sqlx::SqlitePool::connect(url).await.unwrap();
    let rows: Vec<(String, String, i64, i64, String, i64)> = sqlx::query_as(
        "SELECT m.name, p.name, p.\"notnull\", p.pk, upper(p.type), \
                instr(upper(m.sql), 'WITHOUT ROWID') > 0 \
         FROM sqlite_master m JOIN pragma_table_info(m.name) p \
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND m.name <> '_sqlx_migrations'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    let single_pk: BTreeSet<String> = {
        let mut pks: BTreeMap<&str, usize> = BTreeMap::new();
        for (table, _, _, pk, _, _) in &rows {
            if *pk > 0 {
                *pks.entry(table.as_str()).or_default() += 1;
            }
        }
        pks.into_iter().filter(|(_, n)| *n == 1).map(|(t, _)| t.to_owned()).collect()
    };
    rows.into_iter()
        .map(|(table, column, not_null, pk, kind, without_rowid)| {
            let rowid_alias = pk > 0 && kind == "INTEGER" && single_pk.contains(&table);
            let enforced = not_null != 0 || (pk > 0 && (without_rowid != 0 || rowid_alias));
            ((table, column), enforced)
        })
        .collect()
}

async fn postgres_columns(url: &str) -> Columns {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let rows: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT c.table_name::text, c.column_name::text, c.is_nullable::text = 'NO' \
         FROM information_schema.columns c \
         JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name \
         WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE' AND c.table_name <> '_sqlx_migrations'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows.into_iter().map(|(table, column, not_null)| ((table, column), not_null)).collect()
}

fn describe(columns: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    columns.into_iter().map(|(table, column)| format!("{table}.{column}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_migration_sets_make_the_same_tables_columns_and_nullability() {
    let sqlite = migrated(Backend::Sqlite).await.expect("SQLite needs nothing to be there");
    let Some(postgres) = migrated(Backend::Postgres).await else { return };
    assert!(sqlite.len() > 50, "the schema was read: {} columns", sqlite.len());

    let tables = |columns: &Columns| columns.keys().map(|(table, _)| table.clone()).collect::<BTreeSet<_>>();
    assert_eq!(tables(&sqlite), tables(&postgres), "the same tables");
    let only_sqlite = describe(sqlite.keys().filter(|c| !postgres.contains_key(*c)).cloned());
    let only_postgres = describe(postgres.keys().filter(|c| !sqlite.contains_key(*c)).cloned());
    assert!(
        only_sqlite.is_empty() && only_postgres.is_empty(),
        "the same columns: only on SQLite {only_sqlite:?}, only on Postgres {only_postgres:?}"
    );
    let nullability: Vec<String> = sqlite
        .iter()
        .filter(|(column, not_null)| postgres[*column] != **not_null)
        .map(|((table, column), not_null)| {
            let (on_sqlite, on_postgres) = if *not_null { ("NOT NULL", "nullable") } else { ("nullable", "NOT NULL") };
            format!("{table}.{column}: {on_sqlite} on SQLite, {on_postgres} on Postgres")
        })
        .collect();
    assert!(nullability.is_empty(), "the same NOT NULL columns, but:\n{}", nullability.join("\n"));
}

/// SQLite lets a PRIMARY KEY be NULL unless it says NOT NULL; migration 0005 rebuilt every table
/// whose id did not. An existing database keeps its rows, indexes and foreign keys through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_sqlite_database_keeps_its_rows_and_refuses_null_ids_after_the_rebuild() {
    use sqlx::migrate::Migrator;

    let db = TestDb::create(Backend::Sqlite).await.unwrap();
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(&db.url).unwrap().create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    // The database as the releases before 0005 left it, with a user, a key and an agent in it.
    let mut before =
        Migrator::new(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))).await.unwrap();
    before.migrations = before.migrations.iter().filter(|m| m.version < 5).cloned().collect::<Vec<_>>().into();
    before.run(&pool).await.unwrap();
    let user = uuid::Uuid::new_v4();
    sqlx::query("INSERT INTO users (id, name, created_at) VALUES ($1, 'u', '2026-01-01T00:00:00Z')")
        .bind(user)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO api_keys (id, user_id, display, key_hash, created_at) \
         VALUES ($1, $2, 'vk_x', x'01', '2026-01-01T00:00:00Z')",
    )
    .bind(uuid::Uuid::new_v4())
    .bind(user)
    .execute(&pool)
    .await
    .unwrap();
    // The indexes of the tables there were before 0005 (later migrations add tables of their own).
    let indexes = |pool: sqlx::SqlitePool, tables: Vec<String>| async move {
        let all: Vec<(String, String)> =
            sqlx::query_as("SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' ORDER BY name")
                .fetch_all(&pool)
                .await
                .unwrap();
        all.into_iter().filter(|(_, table)| tables.contains(table)).map(|(name, _)| name).collect::<Vec<_>>()
    };
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'").fetch_all(&pool).await.unwrap();
    let indexes_before = indexes(pool.clone(), tables.clone()).await;
    assert!(indexes_before.len() >= 20, "{indexes_before:?}");
    pool.close().await;

    let global = GlobalArgs { database_url: db.url.clone(), secrets_key: None };
    let store = vocode_server::open_store(&global, true).await.expect("0005 runs on an existing database");
    drop(store);

    let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
    let keys: (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM api_keys WHERE user_id = $1").bind(user).fetch_one(&pool).await.unwrap();
    assert_eq!(keys.0, 1, "the rows are kept");
    assert_eq!(indexes(pool.clone(), tables).await, indexes_before, "the indexes are made again");
    let dangling: Vec<(String,)> =
        sqlx::query_as("SELECT \"table\" FROM pragma_foreign_key_check").fetch_all(&pool).await.unwrap();
    assert!(dangling.is_empty(), "{dangling:?}");
    let refs: (String,) =
        sqlx::query_as("SELECT sql FROM sqlite_master WHERE name = 'api_keys'").fetch_one(&pool).await.unwrap();
    assert!(refs.0.contains("REFERENCES users (id)"), "the foreign key still names users: {}", refs.0);
    let null_id = sqlx::query("INSERT INTO users (id, name, created_at) VALUES (NULL, 'n', '2026-01-01T00:00:00Z')")
        .execute(&pool)
        .await;
    assert!(null_id.is_err_and(|e| e.to_string().contains("NOT NULL")), "a NULL id is refused");
    pool.close().await;
}
