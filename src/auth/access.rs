//! Who may open which conversation and list or read which conversations.
//!
//! Pure functions over what Django said (CONTRACT §3 rows 7–9, §4), so every
//! rule is tested here without a server.

use crate::auth::{Lesson, User};
use crate::model::{Conversation, ConversationKey, UserId};
use crate::store::ConversationFilter;

/// Why a confirmed user may not open the conversation they asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub(crate) enum AccessDenied {
    /// A mentor did not say which student the conversation is with (row 7).
    MissingStudentId,
    /// A mentor who is not the lesson's teacher (row 8).
    NotTeacher,
    /// The student is not in the lesson's `student_ids` (row 9, ours).
    NotEnrolled,
    /// `CHAT_REQUIRE_ROSTER` is on and the lesson has no `student_ids`, so
    /// Django confirmed no student for this mentor (row 9, ours).
    NoRoster,
}

impl AccessDenied {
    /// A short human explanation for the response body.
    pub(crate) fn message(&self) -> &'static str {
        match self {
            AccessDenied::MissingStudentId => "student_id is required for mentors",
            AccessDenied::NotTeacher => "only the lesson's teacher can open its conversations",
            AccessDenied::NotEnrolled => "the student is not enrolled in this lesson",
            AccessDenied::NoRoster => {
                "the lesson lists no students, so no student is confirmed for this mentor"
            }
        }
    }
}

/// A `GET /conversations` filter that names someone other than the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a filter may only name yourself")]
pub(crate) struct Forbidden;

/// The conversation `user` opens in `lesson`: a student's own with the
/// lesson's teacher, or a teaching mentor's with `requested_student`.
pub(crate) fn conversation_key(
    user: &User,
    lesson: &Lesson,
    requested_student: Option<UserId>,
) -> Result<ConversationKey, AccessDenied> {
    let student_id = if user.is_mentor {
        let student = requested_student.ok_or(AccessDenied::MissingStudentId)?;
        if user.id != lesson.teacher_id {
            return Err(AccessDenied::NotTeacher);
        }
        student
    } else {
        // A student is always the conversation's student, whatever they ask.
        user.id
    };
    if let Some(enrolled) = &lesson.student_ids {
        if !enrolled.contains(&student_id) {
            return Err(AccessDenied::NotEnrolled);
        }
    }
    Ok(ConversationKey {
        lesson_id: lesson.id,
        mentor_id: lesson.teacher_id,
        student_id,
    })
}

/// With `CHAT_REQUIRE_ROSTER`: a mentor may open a conversation only with a
/// student Django lists in the lesson's `student_ids` ([`conversation_key`]
/// checks membership when the list is there; this refuses its absence).
/// Students are confirmed as themselves by the users endpoint.
pub(crate) fn require_roster(user: &User, lesson: &Lesson) -> Result<(), AccessDenied> {
    if user.is_mentor && lesson.student_ids.is_none() {
        return Err(AccessDenied::NoRoster);
    }
    Ok(())
}

/// The store filter for `GET /conversations`: without a filter the caller's
/// own conversations; a filter must name the caller (with both, one of them).
pub(crate) fn conversation_filter(
    caller: UserId,
    mentor_id: Option<UserId>,
    student_id: Option<UserId>,
    limit: usize,
) -> Result<ConversationFilter, Forbidden> {
    let participant = match (mentor_id, student_id) {
        (None, None) => Some(caller),
        (Some(mentor), None) if mentor == caller => None,
        (None, Some(student)) if student == caller => None,
        (Some(mentor), Some(student)) if mentor == caller || student == caller => None,
        _ => return Err(Forbidden),
    };
    Ok(ConversationFilter {
        mentor_id,
        student_id,
        participant,
        limit,
    })
}

/// Whether `caller` may read `conversation` and its messages.
pub(crate) fn can_read(caller: UserId, conversation: &Conversation) -> bool {
    conversation.has_participant(caller)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Millis, ObjectId};

    const TEACHER: UserId = 10;
    const STUDENT: UserId = 25;

    fn student(id: UserId) -> User {
        User {
            id,
            is_mentor: false,
        }
    }

    fn mentor(id: UserId) -> User {
        User {
            id,
            is_mentor: true,
        }
    }

    fn lesson(student_ids: Option<Vec<UserId>>) -> Lesson {
        Lesson {
            id: 7,
            course_id: 3,
            teacher_id: TEACHER,
            student_ids,
        }
    }

    fn key(student_id: UserId) -> ConversationKey {
        ConversationKey {
            lesson_id: 7,
            mentor_id: TEACHER,
            student_id,
        }
    }

    #[test]
    fn a_student_opens_their_own_conversation_with_the_teacher() {
        assert_eq!(
            conversation_key(&student(STUDENT), &lesson(None), None),
            Ok(key(STUDENT))
        );
    }

    #[test]
    fn a_student_cannot_choose_another_student() {
        assert_eq!(
            conversation_key(&student(STUDENT), &lesson(None), Some(99)),
            Ok(key(STUDENT))
        );
    }

    #[test]
    fn the_teaching_mentor_opens_the_requested_students_conversation() {
        assert_eq!(
            conversation_key(&mentor(TEACHER), &lesson(None), Some(STUDENT)),
            Ok(key(STUDENT))
        );
    }

    #[test]
    fn a_mentor_needs_a_student_id() {
        assert_eq!(
            conversation_key(&mentor(TEACHER), &lesson(None), None),
            Err(AccessDenied::MissingStudentId)
        );
    }

    #[test]
    fn a_mentor_who_does_not_teach_the_lesson_is_refused() {
        assert_eq!(
            conversation_key(&mentor(11), &lesson(None), Some(STUDENT)),
            Err(AccessDenied::NotTeacher)
        );
    }

    #[test]
    fn a_missing_student_id_is_reported_before_the_wrong_teacher() {
        // Row 7 comes before row 8.
        assert_eq!(
            conversation_key(&mentor(11), &lesson(None), None),
            Err(AccessDenied::MissingStudentId)
        );
    }

    #[test]
    fn the_wrong_teacher_is_reported_before_enrolment() {
        // Row 8 comes before row 9.
        assert_eq!(
            conversation_key(&mentor(11), &lesson(Some(vec![])), Some(STUDENT)),
            Err(AccessDenied::NotTeacher)
        );
    }

    #[test]
    fn enrolment_is_checked_when_django_lists_students() {
        let enrolled = lesson(Some(vec![STUDENT, 26]));
        assert_eq!(
            conversation_key(&student(STUDENT), &enrolled, None),
            Ok(key(STUDENT))
        );
        assert_eq!(
            conversation_key(&student(27), &enrolled, None),
            Err(AccessDenied::NotEnrolled)
        );
        assert_eq!(
            conversation_key(&mentor(TEACHER), &enrolled, Some(26)),
            Ok(key(26))
        );
        assert_eq!(
            conversation_key(&mentor(TEACHER), &enrolled, Some(27)),
            Err(AccessDenied::NotEnrolled)
        );
        let empty = lesson(Some(vec![]));
        assert_eq!(
            conversation_key(&student(STUDENT), &empty, None),
            Err(AccessDenied::NotEnrolled)
        );
    }

    #[test]
    fn a_students_ignored_request_does_not_affect_enrolment() {
        let enrolled = lesson(Some(vec![STUDENT]));
        assert_eq!(
            conversation_key(&student(STUDENT), &enrolled, Some(99)),
            Ok(key(STUDENT))
        );
    }

    // Their statuses are `http::error`'s (`From<AccessDenied> for ApiError`).
    #[test]
    fn denials_display_their_message() {
        for denial in [
            AccessDenied::MissingStudentId,
            AccessDenied::NotTeacher,
            AccessDenied::NotEnrolled,
        ] {
            assert_eq!(denial.message(), denial.to_string());
        }
    }

    #[test]
    fn no_filter_lists_the_callers_own_conversations() {
        assert_eq!(
            conversation_filter(STUDENT, None, None, 50),
            Ok(ConversationFilter {
                mentor_id: None,
                student_id: None,
                participant: Some(STUDENT),
                limit: 50,
            })
        );
    }

    #[test]
    fn a_filter_naming_the_caller_applies() {
        let as_mentor = conversation_filter(TEACHER, Some(TEACHER), None, 5).unwrap();
        assert_eq!(
            (
                as_mentor.mentor_id,
                as_mentor.student_id,
                as_mentor.participant
            ),
            (Some(TEACHER), None, None)
        );
        let as_student = conversation_filter(STUDENT, None, Some(STUDENT), 5).unwrap();
        assert_eq!(
            (
                as_student.mentor_id,
                as_student.student_id,
                as_student.participant
            ),
            (None, Some(STUDENT), None)
        );
    }

    #[test]
    fn a_filter_naming_someone_else_is_forbidden() {
        assert_eq!(
            conversation_filter(STUDENT, Some(TEACHER), None, 5),
            Err(Forbidden)
        );
        assert_eq!(
            conversation_filter(TEACHER, None, Some(STUDENT), 5),
            Err(Forbidden)
        );
        assert_eq!(
            conversation_filter(99, Some(TEACHER), Some(STUDENT), 5),
            Err(Forbidden)
        );
    }

    #[test]
    fn both_filters_apply_when_one_is_the_caller() {
        for caller in [TEACHER, STUDENT] {
            let filter = conversation_filter(caller, Some(TEACHER), Some(STUDENT), 5).unwrap();
            assert_eq!(
                (filter.mentor_id, filter.student_id, filter.participant),
                (Some(TEACHER), Some(STUDENT), None)
            );
        }
    }

    #[test]
    fn only_participants_can_read() {
        let conversation = Conversation {
            id: ObjectId::new(),
            lesson_id: 7,
            mentor_id: TEACHER,
            student_id: STUDENT,
            created_at: Millis(0),
            last_seq: 0,
        };
        assert!(can_read(TEACHER, &conversation));
        assert!(can_read(STUDENT, &conversation));
        assert!(!can_read(99, &conversation));
    }

    #[test]
    fn a_required_roster_refuses_mentors_of_lessons_without_one() {
        assert_eq!(
            require_roster(&mentor(TEACHER), &lesson(None)),
            Err(AccessDenied::NoRoster)
        );
        assert_eq!(
            require_roster(&mentor(TEACHER), &lesson(Some(vec![STUDENT]))),
            Ok(())
        );
        assert_eq!(require_roster(&student(STUDENT), &lesson(None)), Ok(()));
    }
}
