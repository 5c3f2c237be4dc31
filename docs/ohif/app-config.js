/** Stock OHIF v3 (3.13.x) reading Sonoloop's DICOMweb: replace the `app-config.js` of OHIF's
 * built viewer (`npm pack @ohif/app@3.13.2` → package/dist/) with this file, and serve that
 * folder on the same origin as Sonoloop (README: "Stock OHIF v3"). Same origin means no CORS
 * and Sonoloop's login session authenticates OHIF's requests. Only `dataSources` and
 * `defaultDataSourceName` differ from OHIF's own default configuration. */
window.config = {
  name: 'sonoloop',
  routerBasename: null,
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 3,
  showWarningMessageForCrossOrigin: true,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  groupEnabledModesFirst: true,
  maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 25 },
  showErrorDetails: 'always',
  defaultDataSourceName: 'sonoloop',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'sonoloop',
      configuration: {
        friendlyName: 'Sonoloop',
        name: 'sonoloop',
        // paths on this origin; behind a proxy that serves Sonoloop elsewhere, use its public URL
        qidoRoot: '/dicomweb',
        wadoRoot: '/dicomweb',
        wadoUriRoot: '/dicomweb',
        qidoSupportsIncludeField: true,
        imageRendering: 'wadors', // frames as stored (`transfer-syntax=*`), decoded by OHIF's codecs
        thumbnailRendering: 'thumbnail', // Sonoloop's PS3.18 /thumbnail resource
        thumbnailRequestStrategy: 'fetch',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: { enabled: true, relativeResolution: 'studies' },
      },
    },
  ],
};
