"""Tencent Cloud SMS (API 2021-01-11) through its official SDK.

Settings: ``SMS_TENCENT_SECRET_ID``, ``SMS_TENCENT_SECRET_KEY``, ``SMS_TENCENT_SDK_APP_ID``,
``SMS_TENCENT_SIGN_NAME``, ``SMS_TENCENT_TEMPLATE_ID`` (a template with one parameter, the
code), and optionally ``SMS_TENCENT_NOTICE_TEMPLATE_ID`` (an approved notice template whose
parameters {1}, {2}… are the notice's ``notice_params`` in order), ``SMS_TENCENT_REGION`` and
``SMS_TENCENT_ENDPOINT``.
"""

import logging

from django.conf import settings

from accounts.identifiers import phone_mask
from accounts.sms._endpoint import split_endpoint
from accounts.sms.base import SmsBackend, SmsDeliveryError, SmsMessage, sdk_missing

try:  # the optional 'sms-tencent' extra
    from tencentcloud.common import credential
    from tencentcloud.common.profile.client_profile import ClientProfile
    from tencentcloud.common.profile.http_profile import HttpProfile
    from tencentcloud.sms.v20210111 import models as sms_models
    from tencentcloud.sms.v20210111 import sms_client
except ImportError:
    SDK_INSTALLED = False
else:
    SDK_INSTALLED = True

logger = logging.getLogger(__name__)


class TencentBackend(SmsBackend):
    name = "tencent"

    def __init__(self):
        if not SDK_INSTALLED:
            raise sdk_missing(self.name)
        protocol, endpoint = split_endpoint(settings.SMS_TENCENT_ENDPOINT)
        http_profile = HttpProfile(
            endpoint=endpoint, protocol=protocol, reqTimeout=int(settings.SMS_TIMEOUT_SECONDS)
        )
        self.client = sms_client.SmsClient(
            credential.Credential(settings.SMS_TENCENT_SECRET_ID, settings.SMS_TENCENT_SECRET_KEY),
            settings.SMS_TENCENT_REGION,
            ClientProfile(httpProfile=http_profile),
        )

    def send(self, message: SmsMessage) -> None:
        request = sms_models.SendSmsRequest()
        request.SmsSdkAppId = settings.SMS_TENCENT_SDK_APP_ID
        request.SignName = settings.SMS_TENCENT_SIGN_NAME
        if message.is_notice:
            request.TemplateId = settings.SMS_TENCENT_NOTICE_TEMPLATE_ID
            request.TemplateParamSet = list(message.notice_params.values())
        else:
            request.TemplateId = settings.SMS_TENCENT_TEMPLATE_ID
            request.TemplateParamSet = [message.code]
        request.PhoneNumberSet = [message.to]
        try:
            response = self.client.SendSms(request)
        except Exception as exc:
            code = getattr(exc, "code", None) or type(exc).__name__
            logger.warning("Tencent SMS to %s failed: %s", phone_mask(message.to), code)
            raise SmsDeliveryError(f"tencent: {code}") from None
        statuses = response.SendStatusSet or []
        if not statuses or statuses[0].Code != "Ok":
            code = statuses[0].Code if statuses else "no status"
            logger.warning("Tencent SMS to %s refused: %s", phone_mask(message.to), code)
            raise SmsDeliveryError(f"tencent: {code}")
