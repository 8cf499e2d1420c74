from rest_framework.routers import SimpleRouter

from keys.api.views import ApiKeyViewSet

router = SimpleRouter(use_regex_path=False)
# Mounted at /api/v1/keys/ by portal.urls, so the resource itself sits at the router's root.
router.register("", ApiKeyViewSet, basename="api-keys")

urlpatterns = router.urls
