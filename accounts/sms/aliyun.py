"""Alibaba Cloud SMS (dysmsapi 2017-05-25) through its official SDK.

Settings: ``SMS_ALIYUN_ACCESS_KEY_ID``, ``SMS_ALIYUN_ACCESS_KEY_SECRET``,
``SMS_ALIYUN_SIGN_NAME``, ``SMS_ALIYUN_TEMPLATE_CODE`` (a template with one ``${code}``
parameter), optionally ``SMS_ALIYUN_NOTICE_TEMPLATE_CODE`` (an approved notice template whose
parameters are named as the notice's ``notice_params``) and ``SMS_ALIYUN_ENDPOINT``.
"""

import json
import logging

from django.conf import settings

from accounts.identifiers import phone_mask
from accounts.sms._endpoint import split_endpoint
from accounts.sms.base import SmsBackend, SmsDeliveryError, SmsMessage, sdk_missing

try:  # the optional 'sms-aliyun' extra
    from alibabacloud_dysmsapi20170525 import models as dysms_models
    from alibabacloud_dysmsapi20170525.client import Client
    from alibabacloud_tea_openapi import utils_models as openapi_models
    from darabonba.runtime import RuntimeOptions
except ImportError:
    SDK_INSTALLED = False
else:
    SDK_INSTALLED = True

logger = logging.getLogger(__name__)


def aliyun_phone_number(e164: str) -> str:
    # Aliyun wants mainland numbers without a prefix and others as country code + number.
    if e164.startswith("+86"):
        return e164[3:]
    return e164.lstrip("+")


class AliyunBackend(SmsBackend):
    name = "aliyun"

    def __init__(self):
        if not SDK_INSTALLED:
            raise sdk_missing(self.name)
        protocol, endpoint = split_endpoint(settings.SMS_ALIYUN_ENDPOINT)
        self.client = Client(
            openapi_models.Config(
                access_key_id=settings.SMS_ALIYUN_ACCESS_KEY_ID,
                access_key_secret=settings.SMS_ALIYUN_ACCESS_KEY_SECRET,
                endpoint=endpoint,
                protocol=protocol,
            )
        )

    def send(self, message: SmsMessage) -> None:
        timeout_ms = int(settings.SMS_TIMEOUT_SECONDS * 1000)
        request = dysms_models.SendSmsRequest(
            phone_numbers=aliyun_phone_number(message.to),
            sign_name=settings.SMS_ALIYUN_SIGN_NAME,
            template_code=(
                settings.SMS_ALIYUN_NOTICE_TEMPLATE_CODE
                if message.is_notice
                else settings.SMS_ALIYUN_TEMPLATE_CODE
            ),
            template_param=json.dumps(
                message.notice_params if message.is_notice else {"code": message.code}
            ),
        )
        try:
            response = self.client.send_sms_with_options(
                request, RuntimeOptions(connect_timeout=timeout_ms, read_timeout=timeout_ms)
            )
        except Exception as exc:
            # SDK errors may echo the request (and so the code): keep only the class name.
            raise SmsDeliveryError(f"aliyun: {type(exc).__name__}") from None
        body = response.body
        if body is None or body.code != "OK":
            code = getattr(body, "code", None)
            logger.warning("Aliyun SMS to %s refused: %s", phone_mask(message.to), code)
            raise SmsDeliveryError(f"aliyun: {code}")
