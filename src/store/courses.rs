//! Courses: applied versions, the plan comment of each merge request, readiness per blade,
//! and readiness notices sent once per lecture.

use rusqlite::{params, OptionalExtension};

use super::{now, Store};

#[derive(Debug, Clone, PartialEq)]
pub struct CourseVersion {
    pub project_id: u64,
    pub version: i64,
    pub course: String,
    pub sha: String,
    /// The course file as applied.
    pub file: String,
    /// What blades pull and containers run: `HOST/courses/ID@sha256:…` or the image.
    pub image: String,
    pub digest: String,
    pub mr_iid: Option<u64>,
    pub applied_by: String,
    pub applied_at: i64,
}

const VCOLS: &str =
    "project_id, version, course, sha, file, image, digest, mr_iid, applied_by, applied_at";

fn version_row(r: &rusqlite::Row) -> rusqlite::Result<CourseVersion> {
    Ok(CourseVersion {
        project_id: r.get::<_, i64>(0)? as u64,
        version: r.get(1)?,
        course: r.get(2)?,
        sha: r.get(3)?,
        file: r.get(4)?,
        image: r.get(5)?,
        digest: r.get(6)?,
        mr_iid: r.get::<_, Option<i64>>(7)?.map(|x| x as u64),
        applied_by: r.get(8)?,
        applied_at: r.get(9)?,
    })
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct PlanRow {
    pub note_id: Option<u64>,
    pub sha: String,
    pub image: Option<String>,
    pub digest: Option<String>,
}

impl Store {
    /// A course's seats taken (its containers that are not stopped), inside `tx`.
    pub fn course_seats_tx(tx: &rusqlite::Transaction<'_>, course: &str) -> rusqlite::Result<u32> {
        tx.query_row(
            &format!(
                "SELECT COUNT(*) FROM containers WHERE course = ?1 AND state IN {}",
                super::containers::ACTIVE
            ),
            [course],
            |r| r.get(0),
        )
    }

    /// Record a new applied version (the next number for the project) and return it.
    pub async fn apply_course_version(
        &self,
        mut v: CourseVersion,
    ) -> anyhow::Result<CourseVersion> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let next: i64 = tx.query_row(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM course_versions WHERE project_id = ?1",
                [v.project_id as i64],
                |r| r.get(0),
            )?;
            v.version = next;
            v.applied_at = now();
            tx.execute(
                &format!(
                    "INSERT INTO course_versions({VCOLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)"
                ),
                params![
                    v.project_id as i64,
                    v.version,
                    v.course,
                    v.sha,
                    v.file,
                    v.image,
                    v.digest,
                    v.mr_iid.map(|x| x as i64),
                    v.applied_by,
                    v.applied_at
                ],
            )?;
            tx.commit()?;
            Ok(v)
        })
        .await
    }

    /// The version of a project in use (the last applied), if any.
    pub async fn current_course_of_project(
        &self,
        project_id: u64,
    ) -> anyhow::Result<Option<CourseVersion>> {
        self.call(move |c| {
            c.query_row(
                &format!("SELECT {VCOLS} FROM course_versions WHERE project_id = ?1 ORDER BY version DESC LIMIT 1"),
                [project_id as i64],
                version_row,
            )
            .optional()
        })
        .await
    }

    /// All versions of a project, newest first.
    pub async fn course_versions(&self, project_id: u64) -> anyhow::Result<Vec<CourseVersion>> {
        self.call(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {VCOLS} FROM course_versions WHERE project_id = ?1 ORDER BY version DESC"
            ))?;
            let v = st
                .query_map([project_id as i64], version_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(v)
        })
        .await
    }

    /// The current version of every course (one per course id: its project's last version),
    /// for enabled course projects only.
    pub async fn current_courses(&self) -> anyhow::Result<Vec<CourseVersion>> {
        self.call(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {} FROM course_versions v
                 JOIN gitlab_projects p ON p.project_id = v.project_id AND p.mode = 'course'
                 WHERE v.version = (SELECT MAX(version) FROM course_versions w WHERE w.project_id = v.project_id)
                 ORDER BY v.course",
                VCOLS.split(", ").map(|c| format!("v.{c}")).collect::<Vec<_>>().join(", ")
            ))?;
            let v = st.query_map([], version_row)?.collect::<Result<Vec<_>, _>>()?;
            Ok(v)
        })
        .await
    }

    pub async fn current_course(&self, id: &str) -> anyhow::Result<Option<CourseVersion>> {
        Ok(self
            .current_courses()
            .await?
            .into_iter()
            .find(|v| v.course == id))
    }

    pub async fn course_plan(&self, project_id: u64, iid: u64) -> anyhow::Result<Option<PlanRow>> {
        self.call(move |c| {
            c.query_row(
                "SELECT note_id, sha, image, digest FROM course_plans WHERE project_id = ?1 AND mr_iid = ?2",
                params![project_id as i64, iid as i64],
                |r| {
                    Ok(PlanRow {
                        note_id: r.get::<_, Option<i64>>(0)?.map(|x| x as u64),
                        sha: r.get(1)?,
                        image: r.get(2)?,
                        digest: r.get(3)?,
                    })
                },
            )
            .optional()
        })
        .await
    }

    pub async fn save_course_plan(
        &self,
        project_id: u64,
        iid: u64,
        p: PlanRow,
    ) -> anyhow::Result<()> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO course_plans(project_id, mr_iid, note_id, sha, image, digest, updated_at) VALUES (?1,?2,?3,?4,?5,?6,?7)
                 ON CONFLICT(project_id, mr_iid) DO UPDATE SET note_id = excluded.note_id, sha = excluded.sha, image = excluded.image, digest = excluded.digest, updated_at = excluded.updated_at",
                params![project_id as i64, iid as i64, p.note_id.map(|x| x as i64), p.sha, p.image, p.digest, now()],
            )
        })
        .await?;
        Ok(())
    }

    pub async fn set_course_blade(
        &self,
        course: &str,
        blade: &str,
        digest: &str,
    ) -> anyhow::Result<()> {
        let (c1, b, d) = (course.to_string(), blade.to_string(), digest.to_string());
        self.call(move |c| {
            c.execute(
                "INSERT INTO course_blades(course, blade, digest, ready_at) VALUES (?1,?2,?3,?4)
                 ON CONFLICT(course, blade) DO UPDATE SET digest = excluded.digest, ready_at = excluded.ready_at",
                params![c1, b, d, now()],
            )
        })
        .await?;
        Ok(())
    }

    /// (blade, digest it holds, since) for a course.
    pub async fn course_blades(&self, course: &str) -> anyhow::Result<Vec<(String, String, i64)>> {
        let c1 = course.to_string();
        self.call(move |c| {
            let mut st = c.prepare("SELECT blade, digest, ready_at FROM course_blades WHERE course = ?1 ORDER BY blade")?;
            let v = st
                .query_map([c1], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(v)
        })
        .await
    }

    /// True the first time for (course, lecture, kind): a notice is sent once.
    pub async fn first_course_notice(
        &self,
        course: &str,
        lecture: i64,
        kind: &str,
    ) -> anyhow::Result<bool> {
        let (c1, k) = (course.to_string(), kind.to_string());
        self.call(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO course_notices(course, lecture, kind, at) VALUES (?1,?2,?3,?4)",
                params![c1, lecture, k, now()],
            )
        })
        .await
        .map(|n| n == 1)
    }

    /// Each course's current image (its newest applied version): never pruned from a blade.
    pub async fn current_course_images(&self) -> anyhow::Result<Vec<String>> {
        self.call(|c| {
            let mut st = c.prepare(
                "SELECT v.image FROM course_versions v
                 WHERE v.version = (SELECT MAX(w.version) FROM course_versions w WHERE w.project_id = v.project_id)",
            )?;
            let v = st.query_map([], |r| r.get(0))?.collect();
            v
        })
        .await
    }

    /// Containers that are seats of a course (any state).
    pub async fn course_containers(
        &self,
        course: &str,
    ) -> anyhow::Result<Vec<super::containers::ContainerRow>> {
        let c1 = course.to_string();
        self.call(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {} FROM containers WHERE course = ?1 ORDER BY owner, name",
                super::containers::COLS
            ))?;
            let v = st
                .query_map([c1], super::containers::row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(v)
        })
        .await
    }

    /// A course image built from these sources (the tree's hash), if any.
    pub async fn course_build_of_source(
        &self,
        course: &str,
        source: &str,
    ) -> anyhow::Result<Option<String>> {
        let (c1, s1) = (course.to_string(), source.to_string());
        self.call(move |c| {
            c.query_row(
                "SELECT digest FROM course_builds WHERE course = ?1 AND source = ?2",
                [c1, s1],
                |r| r.get(0),
            )
            .optional()
        })
        .await
    }

    pub async fn record_course_build(
        &self,
        course: &str,
        source: &str,
        digest: &str,
    ) -> anyhow::Result<()> {
        let (c1, s1, d) = (course.to_string(), source.to_string(), digest.to_string());
        self.call(move |c| {
            c.execute(
                "INSERT INTO course_builds(course, source, digest, at) VALUES (?1,?2,?3,?4)
                 ON CONFLICT(course, source) DO UPDATE SET digest = excluded.digest, at = excluded.at",
                params![c1, s1, d, now()],
            )
        })
        .await?;
        Ok(())
    }

    /// The projects enabled as courses.
    pub async fn course_projects(&self) -> anyhow::Result<Vec<super::gitlab::ProjectRow>> {
        let ids: Vec<i64> = self
            .call(|c| {
                let mut st = c.prepare(
                    "SELECT project_id FROM gitlab_projects WHERE mode = 'course' ORDER BY path",
                )?;
                let v = st
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(v)
            })
            .await?;
        let mut out = Vec::new();
        for id in ids {
            if let Some(p) = self.gitlab_project(id as u64).await? {
                out.push(p);
            }
        }
        Ok(out)
    }
}
