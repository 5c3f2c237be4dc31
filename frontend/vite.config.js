// Builds the viewer into the Django static files (committed; see README "Front end").
import { defineConfig } from 'vite';

export default defineConfig({
  base: './',
  build: {
    outDir: '../src/sonoloop/web/annotations/static/annotations/viewer',
    emptyOutDir: true,
    sourcemap: false,
    reportCompressedSize: false,
    chunkSizeWarningLimit: 6000,
    rollupOptions: {
      input: { editor: 'src/editor.js', player: 'src/player.js' },
      output: {
        entryFileNames: '[name].js',
        chunkFileNames: 'chunks/[name]-[hash].js',
        assetFileNames: 'assets/[name]-[hash][extname]',
      },
    },
  },
  worker: { format: 'es' },
});
