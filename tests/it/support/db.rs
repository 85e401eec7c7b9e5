//! A database that exists for one test only, on either backend: a fresh SQLite file in a folder
//! of its own, or a fresh database on the Postgres server of `TEST_POSTGRES_URL`, dropped
//! afterwards.

use std::path::PathBuf;

use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The server the Postgres suites create their databases on.
fn postgres_admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/postgres".into())
}

fn postgres_required() -> bool {
    std::env::var("REQUIRE_POSTGRES").is_ok_and(|v| v == "1" || v == "true")
}

/// A database that exists for one test only.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    cleanup: Cleanup,
}

enum Cleanup {
    Dir(PathBuf),
    Database { admin: String, name: String },
}

impl TestDb {
    /// A fresh database, or `None` when Postgres is not reachable and not required.
    pub async fn create(backend: Backend) -> Option<TestDb> {
        match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(format!("vocode-test-{}", Uuid::new_v4().simple()));
                std::fs::create_dir_all(&dir).unwrap();
                Some(TestDb {
                    url: format!("sqlite://{}", dir.join("vocode.db").display()),
                    backend,
                    cleanup: Cleanup::Dir(dir),
                })
            }
            Backend::Postgres => {
                let admin = postgres_admin_url();
                let conn = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(std::time::Duration::from_secs(3))
                    .connect(&admin)
                    .await;
                let pool = match conn {
                    Ok(pool) => pool,
                    Err(err) if !postgres_required() => {
                        eprintln!("SKIPPED: Postgres is not reachable at {admin} ({err}); set REQUIRE_POSTGRES=1 to fail instead");
                        return None;
                    }
                    Err(err) => panic!("REQUIRE_POSTGRES is set but Postgres is not reachable at {admin}: {err}"),
                };
                let name = format!("vocode_test_{}", Uuid::new_v4().simple());
                sqlx::query(&format!("CREATE DATABASE {name}")).execute(&pool).await.expect("create a test database");
                pool.close().await;
                let url = match admin.rfind('/') {
                    Some(i) if admin[..i].contains("://") && admin.len() > i => {
                        let (base, _) = admin.split_at(i);
                        let query = admin.find('?').map(|q| &admin[q..]).unwrap_or("");
                        format!("{base}/{name}{query}")
                    }
                    _ => format!("{admin}/{name}"),
                };
                Some(TestDb { url, backend, cleanup: Cleanup::Database { admin, name } })
            }
        }
    }
}

impl TestDb {
    /// A Postgres database's outage, as the server sees one: with `reachable` false, no new
    /// connection to it is accepted and every open one is cut; with `true`, it answers again.
    pub async fn reachable(&self, reachable: bool) {
        let Cleanup::Database { admin, name } = &self.cleanup else { panic!("an outage needs Postgres") };
        let pool = sqlx::PgPool::connect(admin).await.expect("the Postgres server");
        sqlx::query(&format!("ALTER DATABASE {name} WITH ALLOW_CONNECTIONS {reachable}"))
            .execute(&pool)
            .await
            .expect("allow or refuse connections");
        if !reachable {
            sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
                .bind(name)
                .execute(&pool)
                .await
                .expect("cut the open connections");
        }
        pool.close().await;
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Database { admin, name } => {
                let (admin, name) = (admin.clone(), name.clone());
                // Drop runs outside any runtime we may block: use a thread of its own.
                let _ = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                    rt.block_on(async {
                        if let Ok(pool) = sqlx::PgPool::connect(&admin).await {
                            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                                .execute(&pool)
                                .await;
                            pool.close().await;
                        }
                    });
                })
                .join();
            }
        }
    }
}
