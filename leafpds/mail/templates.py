"""
The mails leafpds sends, as plain text: one subject and body per purpose.

Operators: this file is where to read (or reword) what your users receive.
``$token`` is the code, ``$handle`` the account's handle, ``$service`` the
server's public URL.  Each code is good for 15 minutes and for one use.
The subjects are the official PDS's, so users recognise the mails.
"""

from dataclasses import dataclass
from string import Template


@dataclass(frozen=True)
class MailTemplate:
    subject: str
    body: str

    def render(self, **values: str) -> tuple[str, str]:
        """(subject, body) with the ``$names`` filled in."""
        return Template(self.subject).substitute(values), Template(self.body).substitute(values)


CONFIRM_EMAIL = MailTemplate(
    "Email Confirmation",
    """\
Hello @$handle,

Your code to confirm this email address on $service is:

    $token

Enter it in your app. It is good for 15 minutes.

If you did not ask for this, you can ignore this mail.
""",
)

UPDATE_EMAIL = MailTemplate(
    "Email Update Requested",
    """\
Hello @$handle,

Your code to change the email address of your account on $service is:

    $token

Enter it in your app together with your new address. It is good for 15 minutes.

If you did not ask for this, someone may be using your account: change your
password.
""",
)

RESET_PASSWORD = MailTemplate(
    "Password Reset Requested",
    """\
Hello @$handle,

We received a request to reset the password of your account on $service.
Your reset code is:

    $token

Enter it in your app with your new password. It is good for 15 minutes.
Resetting the password signs you out everywhere.

If you did not ask for this, you can ignore this mail: your password stays
as it is.
""",
)

DELETE_ACCOUNT = MailTemplate(
    "Account Deletion Requested",
    """\
Hello @$handle,

Your code to delete your account on $service for good is:

    $token

Enter it in your app together with your password. It is good for 15 minutes.

If you did not ask for this, do not share this code, and change your password.
""",
)

PLC_OPERATION = MailTemplate(
    "PLC Update Operation Requested",
    """\
Hello @$handle,

We received a request to update your identity (your DID's PLC record) on
$service. Your confirmation code is $token

It is good for 15 minutes. If you did not ask for this, do not share this
code, and change your password.
""",
)

#: The template for each email-token purpose (see leafpds.accounts.email_tokens).
BY_PURPOSE: dict[str, MailTemplate] = {
    "confirm_email": CONFIRM_EMAIL,
    "update_email": UPDATE_EMAIL,
    "reset_password": RESET_PASSWORD,
    "delete_account": DELETE_ACCOUNT,
    "plc_operation": PLC_OPERATION,
}
