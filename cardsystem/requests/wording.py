"""What the service desk tells customers and the desk, in one place (the bot's own sentences are in
domain.yml; these go out when no conversation asked for them)."""

RAISED = "We have registered your {label} request, reference {reference}. We'll complete it by {promised}."
RAISED_SUBJECT = "Your {label} request {reference}"
IN_PROGRESS = "Update on your {label} request {reference}: a colleague is working on it now. We'll complete it by {promised}."
NEEDS_DOCUMENTS = ("Your {label} request {reference} needs something from you: {needs}. "
                   "Please send it in this chat as a photo or PDF. {clock}")
CLOCK_PAUSE = "Our clock is paused until it arrives; the {days} left run from then."
CLOCK_RESTART = "Once it arrives we'll complete your request within {days}."
DOCUMENTS_RECEIVED = ("Thank you, we've received your document for {reference} and passed it to the desk. "
                      "We'll complete it by {promised}.")
DOCUMENTS_MORE = "Thank you, we've added your document to {reference}. The desk will look at it with the rest."
RESOLVED = "{done}. Reference {reference}: {resolution} Your signed proof follows."
FEEDBACK = "How did we do? Rate us or, if it is not sorted, escalate it here: {link}"
PROOF_CAPTION = "Signed proof of resolution, reference {reference}"
FEEDBACK_THANKS = "Thank you for your feedback on {reference}."
REJECTED = ("We could not complete your {label} request {reference}: {reason}. "
            "If you disagree, reply here and ask for a person.")
ESCALATION_ASKED = "escalated by the customer from the feedback page"
DELAY = ("Sorry, your {label} request {reference} is taking longer than we promised ({old}). {reason} "
         "We'll complete it by {promised}.")
DELAY_REASON_DEFAULT = "Our checks need a little more time."
ESCALATED = ("Your {label} request {reference} is still not done, so it has gone up to our {level}. "
             "We'll complete it by {promised}.")
OMBUDSMAN = ("Your {label} request {reference} is still not done and we are sorry. You may now take it to the "
             "{level}: {contact}. We keep working on it and will tell you when it is done.")
REOPENED = "Your {label} request {reference} is open again and with our {level}. We'll come back by {promised}."
UPDATE_SUBJECT = "Update on your request {reference}"

# to the desk, in the console
ALERT_LATE = "{reference} ({label}) is past its promised time {promised}. The customer is being told the new date {new}."
ALERT_ESCALATED = "{reference} ({label}) escalated to level {level} ({name}) after a second missed date."
ALERT_REOPENED = "{reference} ({label}) re-opened by the customer from the feedback page: {comment}"

# the bank's news that is not about a request (cardsystem.service): a plain message inside the
# 24-hour window; outside it, its template in templates.yml says the same
PAYMENT_RECEIVED = ("We have received your payment of {amount} on your card ending {card_last4} on {paid_on}. "
                    "Total due now {total_due}. Thank you.")
CARD_BLOCKED = ("Your card ending {card_last4} was blocked on {blocked_at} ({block_reason}). A replacement card "
                "will be sent to your registered address. Questions? Call us on {support_phone} or type \"agent\" here.")
